"""ISMRMRD raw data (.h5 with a ``dataset`` group) through the ``ismrmrd`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_path
from diffrecon.io.errors import InvalidScanError, check_declared_size
from diffrecon.io.ismrmrd_header import acquisition_from_header, acquisition_header, parse_header
from diffrecon.io.records import MRIAcquisition

_SKIP_FLAGS = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA")


def is_ismrmrd(path: str | Path) -> bool:
    """True if an HDF5 file holds an ISMRMRD ``dataset`` group with acquisitions."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "dataset" in f and "data" in f["dataset"]
    except OSError:
        return False


def read_ismrmrd(path: str | Path, dataset: str = "dataset") -> MRIAcquisition:
    """Read Cartesian ISMRMRD raw data: lines placed by encode step 1/2 and slice counters."""
    import ismrmrd

    from diffrecon.io.fastmri import _open_h5

    path = Path(path)
    with _open_h5(path) as f:
        if dataset not in f or "data" not in f[dataset]:
            raise InvalidScanError(path, f"no ISMRMRD '{dataset}/data' acquisitions")
        if "xml" not in f[dataset]:
            raise InvalidScanError(path, f"no ISMRMRD '{dataset}/xml' header")
    try:
        ds = ismrmrd.Dataset(str(path), dataset, create_if_needed=False, mode="r")
    except TypeError:
        ds = ismrmrd.Dataset(str(path), dataset, create_if_needed=False)
    try:
        try:
            info = parse_header(ds.read_xml_header())
        except ValueError as exc:
            raise InvalidScanError(path, str(exc)) from None
        n = ds.number_of_acquisitions()
        if n == 0:
            raise InvalidScanError(path, "ISMRMRD file holds no acquisitions")
        lines = []
        skip = [getattr(ismrmrd, name) for name in _SKIP_FLAGS]
        for i in range(n):
            try:
                a = ds.read_acquisition(i)
            except Exception as exc:
                raise InvalidScanError(
                    path, f"cannot read acquisition {i} ({type(exc).__name__}: {exc})"
                ) from None
            if any(a.is_flag_set(fl) for fl in skip):
                continue
            idx = a.idx
            lines.append(
                (int(idx.kspace_encode_step_1), int(idx.kspace_encode_step_2), int(idx.slice),
                 np.asarray(a.data))
            )
    finally:
        ds.close()
    if not lines:
        raise InvalidScanError(path, "ISMRMRD file holds no imaging acquisitions")
    n_coils, n_samples = lines[0][3].shape
    if any(d.shape != (n_coils, n_samples) for *_, d in lines):
        raise InvalidScanError(path, "acquisitions differ in channel count or length")
    n_lin = max(info.encoded_matrix[1], max(ln for ln, *_ in lines) + 1)
    n_par = max(e2 for _, e2, _, _ in lines) + 1
    n_slc = max(s for _, _, s, _ in lines) + 1
    if n_par > 1 and n_slc > 1:
        raise InvalidScanError(path, "multi-slab 3D ISMRMRD data is not supported yet")
    n_z = max(n_par, n_slc)
    check_declared_size(path, "the ISMRMRD encoding", (n_z, n_coils, n_lin, n_samples), 8)
    k = np.zeros((n_z, n_coils, n_lin, n_samples), np.complex64)
    mask = np.zeros((n_lin, n_samples), bool)
    for ln, e2, s, d in lines:
        k[e2 if n_par > 1 else s, :, ln, :] += d
        mask[ln] = True
    acq = acquisition_from_header(path, k, mask, info)
    return acq.validate()


def write_ismrmrd(acq: MRIAcquisition, path: str | Path, dataset: str = "dataset") -> Path:
    """Write the sampled lines of an MRIAcquisition as ISMRMRD acquisitions."""
    import ismrmrd

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink(missing_ok=True)
        ds = ismrmrd.Dataset(str(tmp), dataset, create_if_needed=True)
        try:
            ds.write_xml_header(acquisition_header(acq))
            n_z, n_coils, n_lin, _ = acq.kspace.shape
            sampled = np.flatnonzero(acq.mask.any(axis=1))
            counter = 0
            for z in range(n_z):
                for ln in sampled:
                    line = np.ascontiguousarray(acq.kspace[z, :, ln, :])
                    a = ismrmrd.Acquisition.from_array(line)
                    a.idx.kspace_encode_step_1 = int(ln)
                    a.idx.slice = int(z)
                    a.scan_counter = counter
                    a.center_sample = acq.kspace.shape[-1] // 2
                    counter += 1
                    ds.append_acquisition(a)
        finally:
            ds.close()
    return path
