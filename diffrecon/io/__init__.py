"""File formats -> typed records and back (numpy only; no torch, no Prefect)."""

from __future__ import annotations

from pathlib import Path

from diffrecon.io.errors import InvalidScanError
from diffrecon.io.records import MRIAcquisition, remove_readout_oversampling, scan_name

__all__ = ["InvalidScanError", "MRIAcquisition", "load_scan", "scan_name"]


def load_scan(path: str | Path) -> MRIAcquisition:
    """Read any supported raw MRI file, chosen by content: fastMRI HDF5, ISMRMRD, twix
    (HDF5 scans without readout oversampling where the header's reconstruction matrix says
    so: :func:`~diffrecon.io.records.remove_readout_oversampling`)."""
    from diffrecon.io.fastmri import is_hdf5, read_fastmri
    from diffrecon.io.ismrmrd_io import is_ismrmrd, read_ismrmrd
    from diffrecon.io.twix import read_twix

    path = Path(path)
    if not path.exists():
        raise InvalidScanError(path, "file does not exist")
    if path.is_dir():
        raise InvalidScanError(path, "is a folder; expected a raw MRI file (.h5 or .dat)")
    if path.stat().st_size == 0:
        raise InvalidScanError(path, "file is empty")
    if is_hdf5(path):  # readout oversampling removed where the header says (as fastMRI)
        acq = read_ismrmrd(path) if is_ismrmrd(path) else read_fastmri(path)
        return remove_readout_oversampling(acq)
    if path.suffix.lower() == ".dat":
        return read_twix(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".mrd"):
        raise InvalidScanError(path, "not an HDF5 file (no HDF5 signature)")
    raise InvalidScanError(
        path, "unrecognised format: expected fastMRI/ISMRMRD HDF5 (.h5) or Siemens twix (.dat)"
    )
