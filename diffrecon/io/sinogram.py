"""The sinogram file: measured or simulated CT data in HDF5.

Layout (version 1):
- ``sinogram``: float32 (slices, views, detectors), line integrals in 1/mm times mm (the
  projector's units: pixel size in mm times attenuation in the image's units);
- ``angles``: float64 (views,) in radians;
- attributes: ``format`` = "diffrecon-sinogram", ``version`` = 1, ``geometry`` one of
  "parallel", "fan-flat", "fan-equiangular", ``det_spacing`` (mm, or radians for an
  equi-angular detector), ``source_origin`` and ``origin_det`` (mm, fan only),
  ``image_rows``, ``image_cols``, ``pixel_size`` (mm) of the grid to reconstruct on,
  ``units`` (e.g. "ct-unit: clip((HU + 1000) / 2000, 0, 1)");
- optional ``reference``: float32 (slices, rows, cols) in the same units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_path
from diffrecon.io.errors import InvalidScanError, check_declared_size


@dataclass
class CTAcquisition:
    name: str
    sinogram: np.ndarray  # (slices, views, detectors)
    angles: np.ndarray
    geometry: str
    det_spacing: float
    image_shape: tuple[int, int]
    pixel_size: float = 1.0
    source_origin: float = 0.0
    origin_det: float = 0.0
    units: str = "ct-unit: clip((HU + 1000) / 2000, 0, 1)"
    reference: np.ndarray | None = None
    source: str = ""


def write_sinogram(acq: CTAcquisition, path: str | Path) -> Path:
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("sinogram", data=acq.sinogram.astype(np.float32))
            f.create_dataset("angles", data=np.asarray(acq.angles, np.float64))
            if acq.reference is not None:
                f.create_dataset("reference", data=acq.reference.astype(np.float32))
            f.attrs.update({"format": "diffrecon-sinogram", "version": 1, "geometry": acq.geometry,
                            "det_spacing": acq.det_spacing, "source_origin": acq.source_origin,
                            "origin_det": acq.origin_det, "image_rows": acq.image_shape[0],
                            "image_cols": acq.image_shape[1], "pixel_size": acq.pixel_size,
                            "units": acq.units})
    return path


def read_sinogram(path: str | Path) -> CTAcquisition:
    import h5py

    from diffrecon.io.fastmri import _open_h5
    from diffrecon.io.records import scan_name

    path = Path(path)
    with _open_h5(path) as f:
        if f.attrs.get("format") != "diffrecon-sinogram":
            raise InvalidScanError(path, "not a diffrecon sinogram file (format attribute)")
        for key in ("sinogram", "angles"):
            if key not in f:
                raise InvalidScanError(path, f"no '{key}' dataset")
        check_declared_size(path, "'sinogram'", f["sinogram"].shape, 4)
        s = np.asarray(f["sinogram"][()], np.float32)
        a = np.asarray(f["angles"][()], np.float64)
        if s.ndim != 3:
            raise InvalidScanError(path, f"'sinogram' has rank {s.ndim}, expected 3 "
                                         "(slices, views, detectors)")
        if s.shape[1] != a.shape[0]:
            raise InvalidScanError(path, f"{s.shape[1]} views but {a.shape[0]} angles")
        if not np.isfinite(s).all():
            raise InvalidScanError(path, "sinogram contains NaN or Inf values")
        at = dict(f.attrs)
        ref = np.asarray(f["reference"][()], np.float32) if "reference" in f else None
    del h5py
    return CTAcquisition(scan_name(path), s, a, str(at["geometry"]), float(at["det_spacing"]),
                         (int(at["image_rows"]), int(at["image_cols"])),
                         float(at.get("pixel_size", 1.0)), float(at.get("source_origin", 0.0)),
                         float(at.get("origin_det", 0.0)), str(at.get("units", "")), ref,
                         str(path))
