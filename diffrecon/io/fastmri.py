"""fastMRI HDF5: read and write.

fastMRI stores ``kspace`` as (slices, coils, readout, phase-encode) for multi-coil
data and (slices, readout, phase-encode) for single-coil data, the sampling
``mask`` along the phase-encode axis, the reference images ``reconstruction_rss``
(multi-coil) or ``reconstruction_esc`` (single-coil) in the same (readout, phase)
orientation, and the ISMRMRD XML header in ``ismrmrd_header``. diffrecon's
convention puts the readout last, so both k-space and images are transposed on
read and transposed back on write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_path
from diffrecon.io.errors import InvalidScanError, check_declared_size
from diffrecon.io.ismrmrd_header import (
    HeaderInfo,
    acquisition_from_header,
    acquisition_header,
    parse_header,
    strip_identifiers,
)
from diffrecon.io.records import MRIAcquisition, mask_from_kspace

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == HDF5_SIGNATURE


def _open_h5(path: Path):
    import h5py

    if not path.exists():
        raise InvalidScanError(path, "file does not exist")
    if path.stat().st_size < 8 or not is_hdf5(path):
        raise InvalidScanError(path, "not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InvalidScanError(path, f"truncated or corrupt HDF5 file ({exc})") from None


def read_fastmri(path: str | Path) -> MRIAcquisition:
    """Read a fastMRI multi-coil or single-coil HDF5 file into an MRIAcquisition."""
    path = Path(path)
    with _open_h5(path) as f:
        if "kspace" not in f:
            raise InvalidScanError(path, "no 'kspace' dataset (not a fastMRI file?)")
        ds = f["kspace"]
        if ds.ndim not in (3, 4):
            raise InvalidScanError(
                path,
                f"'kspace' has rank {ds.ndim}, expected 4 (slices, coils, readout, phase) "
                "or 3 (slices, readout, phase)",
            )
        if not np.issubdtype(ds.dtype, np.complexfloating):
            raise InvalidScanError(path, f"'kspace' has dtype {ds.dtype}, expected complex")
        check_declared_size(path, "'kspace'", ds.shape, max(ds.dtype.itemsize, 8))
        for key in ("reconstruction_rss", "reconstruction_esc"):
            if key in f:
                check_declared_size(path, f"'{key}'", f[key].shape, 4)
        try:
            raw = ds[()]
        except OSError as exc:
            raise InvalidScanError(path, f"truncated or corrupt 'kspace' data ({exc})") from None
        single_coil = raw.ndim == 3
        if single_coil:
            raw = raw[:, None]
        kspace = np.ascontiguousarray(np.swapaxes(raw, -1, -2)).astype(np.complex64)
        if "mask" in f:
            m = np.asarray(f["mask"][()]).astype(bool)
            if m.ndim == 1:
                if m.shape[0] != kspace.shape[-2]:
                    raise InvalidScanError(
                        path,
                        f"'mask' has {m.shape[0]} entries but k-space has "
                        f"{kspace.shape[-2]} phase-encode lines",
                    )
                mask = np.repeat(m[:, None], kspace.shape[-1], axis=1)
            elif m.ndim == 2:
                mask = np.ascontiguousarray(m.T)
            else:
                raise InvalidScanError(path, f"'mask' has rank {m.ndim}, expected 1 or 2")
        else:
            mask = mask_from_kspace(kspace) if kspace.size else np.zeros(kspace.shape[-2:], bool)
        ref_key = "reconstruction_esc" if single_coil else "reconstruction_rss"
        if ref_key not in f:
            keys = ("reconstruction_rss", "reconstruction_esc")
            ref_key = next((k for k in keys if k in f), None)
        reference = None
        if ref_key is not None:
            reference = np.ascontiguousarray(np.swapaxes(f[ref_key][()], -1, -2)).astype(
                np.float32
            )
        n_ky, n_kx = kspace.shape[-2:]
        info = None
        if "ismrmrd_header" in f:
            text = f["ismrmrd_header"][()]
            try:
                info = parse_header(text)
            except ValueError as exc:
                raise InvalidScanError(path, str(exc)) from None
        if info is None:
            info = HeaderInfo((n_kx, n_ky, 1), (n_kx, n_ky, 1), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    metadata = {"attrs": {k: str(v) for k, v in attrs.items()}, "single_coil": single_coil}
    return acquisition_from_header(path, kspace, mask, info, metadata, reference,
                                   ref_key).validate()


def write_fastmri(acq: MRIAcquisition, path: str | Path) -> Path:
    """Write an MRIAcquisition as a fastMRI-style HDF5 file (atomically: temp name, rename)."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        single = bool(acq.metadata.get("single_coil", False)) and acq.kspace.shape[1] == 1
        k = np.swapaxes(acq.kspace, -1, -2)
        if single:
            k = k[:, 0]
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=np.ascontiguousarray(k).astype(np.complex64))
            mask = acq.mask.astype(bool)
            if (mask == mask[:, :1]).all():
                f.create_dataset("mask", data=mask[:, 0])
            else:
                f.create_dataset("mask", data=np.ascontiguousarray(mask.T))
            if acq.reference is not None:
                key = acq.reference_kind or (
                    "reconstruction_esc" if single else "reconstruction_rss")
                f.create_dataset(key, data=np.swapaxes(acq.reference, -1, -2).astype(np.float32))
            f.create_dataset("ismrmrd_header", data=acquisition_header(acq))
            for key, value in acq.metadata.get("attrs", {}).items():
                f.attrs[key] = value
            if acq.reference is not None and "max" not in f.attrs:
                f.attrs["max"] = float(acq.reference.max())
    return path


def write_reconstruction_h5(path: Path, image: np.ndarray, affine: np.ndarray, method: str,
                            description: str, header: str | None = None,
                            deidentify: bool = False) -> Path:
    """fastMRI-style HDF5 of a reconstruction: ``reconstruction`` (slices, rows, cols)
    float32 in fastMRI's layout (the last two axes swapped, as fastMRI stores images),
    with the affine and the method as attributes and the source's ISMRMRD header as
    ``ismrmrd_header`` (without subject and study information when de-identifying).
    Written atomically."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=np.swapaxes(image, -1, -2).astype(np.float32))
            f.attrs.update({"method": method, "description": description,
                            "affine_slice_row_col_to_ras": np.asarray(affine, np.float64),
                            "layout": "fastMRI (slices, readout, phase): transpose the last "
                                      "two axes for diffrecon's (slices, rows, cols)"})
            if header:
                f.create_dataset("ismrmrd_header",
                                 data=strip_identifiers(header) if deidentify else header)
    return path
