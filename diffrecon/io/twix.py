"""Siemens twix (.dat, VB and VD/VE) through twixtools.

Image-scan lines are placed by their loop counters (Lin, Par, Slc); all channels
are kept. The matrix comes from the counters and the data, not from the header's
base resolution (which a Pulseq sequence need not fill, see FACTS.md).
"""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np

from diffrecon.io.errors import InvalidScanError
from diffrecon.io.records import MRIAcquisition, crop_readout, scan_name


def twix_version(path: Path) -> str:
    """'VB' or 'VD' (VD and VE share a layout) from the first bytes of the file.

    VD/VE files start with two uint32: 0 and the number of measurements (1..64).
    VB files start with the header length of the single measurement.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise InvalidScanError(path, "unknown twix version: file is too short for a twix header")
    first, second = struct.unpack("<II", head)
    if first == 0 and 0 < second <= 64:
        return "VD"
    if 32 <= first < size:
        return "VB"
    raise InvalidScanError(
        path, "unknown twix version: the first bytes match neither a VB nor a VD/VE header"
    )


def _get(d: Any, *keys: str, default: Any = None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def read_twix(path: str | Path, remove_os: bool = False) -> MRIAcquisition:
    """Read the image scan of a Siemens twix file into an MRIAcquisition.

    remove_os: drop the 2x readout oversampling (crop the centre half of the
    image along the readout) when the header declares it.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidScanError(path, "file does not exist")
    version = twix_version(path)
    import twixtools

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # twixtools prints warnings
            meas = twixtools.read_twix(
                str(path), verbose=False, parse_pmu=False, keep_syncdata=False
            )
    except Exception as exc:  # twixtools raises many kinds on corrupt data
        raise InvalidScanError(
            path, f"cannot parse twix {version} file ({type(exc).__name__}: {exc})"
        ) from None
    if not meas:
        raise InvalidScanError(path, "twix file holds no measurement")
    m = meas[-1]  # the last measurement is the imaging scan (earlier ones: adjustments)
    mdbs = [b for b in m.get("mdb", []) if b.is_image_scan()]
    if not mdbs:
        raise InvalidScanError(path, "twix file holds no image-scan lines")
    n_coils, n_samples = mdbs[0].data.shape
    if any(b.data.shape != (n_coils, n_samples) for b in mdbs):
        raise InvalidScanError(path, "image-scan lines differ in channel count or length")
    lins = np.array([b.cLin for b in mdbs])
    pars = np.array([b.cPar for b in mdbs])
    slcs = np.array([b.cSlc for b in mdbs])
    n_lin, n_par, n_slc = lins.max() + 1, pars.max() + 1, slcs.max() + 1
    if n_par > 1 and n_slc > 1:
        raise InvalidScanError(path, "multi-slab 3D twix data is not supported yet")
    n_z = max(n_par, n_slc)
    zidx = pars if n_par > 1 else slcs
    k = np.zeros((n_z, n_coils, n_lin, n_samples), np.complex64)
    for b, ln, z in zip(mdbs, lins, zidx):
        k[z, :, ln, :] += b.data  # averages add up
    hdr = m.get("hdr", {})
    os_factor = float(_get(hdr, "Dicom", "flReadoutOSFactor", default=1.0) or 1.0)
    if remove_os and os_factor > 1.0:
        keep = int(round(n_samples / os_factor))
        k = crop_readout(k, keep) / np.sqrt(os_factor).astype(np.float32)
    slice0 = _get(hdr, "MeasYaps", "sSliceArray", "asSlice", default=[{}])
    slice0 = slice0[0] if isinstance(slice0, list) and slice0 else {}
    fov_ro = float(slice0.get("dReadoutFOV", 0.0) or 0.0)
    fov_pe = float(slice0.get("dPhaseFOV", 0.0) or 0.0)
    thick = float(slice0.get("dThickness", 0.0) or 0.0)
    if os_factor > 1.0 and not remove_os:
        fov_ro *= os_factor  # the kept oversampled readout covers a wider field of view
    mask = np.zeros((n_lin, k.shape[-1]), bool)
    mask[np.unique(lins), :] = True
    nx = k.shape[-1]
    study = {}
    for key, src in (
        ("patient_name", ("Config", "PatientName")),
        ("protocol_name", ("Dicom", "tProtocolName")),
        ("series_description", ("Dicom", "tProtocolName")),
    ):
        v = _get(hdr, *src)
        if isinstance(v, str) and v:
            study[key] = v
    freq = float(_get(hdr, "Dicom", "lFrequency", default=0.0) or 0.0)
    acq = MRIAcquisition(
        name=scan_name(path),
        kspace=k,
        mask=mask,
        encoded_matrix=(nx, n_lin, n_z),
        recon_matrix=(nx, n_lin, n_z),
        fov_mm=(fov_ro, fov_pe, thick * n_z),
        reference=None,
        source=str(path),
        metadata={**study, "twix_version": version, "frequency_hz": freq},
    )
    return acq.validate()
