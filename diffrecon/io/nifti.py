"""NIfTI volumes in and out, reoriented to canonical RAS and sliced as BENCHMARKS.md lays
slices out (the slicing itself: :mod:`diffrecon.common.geometry`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_path
from diffrecon.common.geometry import slice_volume, slices_affine
from diffrecon.io.errors import InvalidScanError, check_declared_size


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file reoriented to canonical RAS: (data float32, affine)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InvalidScanError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        check_declared_size(path, "the NIfTI header", img.shape, 4)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except InvalidScanError:
        raise
    except Exception as exc:
        raise InvalidScanError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidScanError(path, f"NIfTI volume has rank {data.ndim}, expected 3")
    if not np.isfinite(data).all():
        raise InvalidScanError(path, "NIfTI volume contains NaN or Inf values")
    return data, img.affine


def reslice(data: np.ndarray, affine: np.ndarray,
            orientation: str = "axial") -> tuple[np.ndarray, np.ndarray]:
    """Any (i, j, k) array with its voxel -> RAS affine, in the BENCHMARKS slice layout:
    (slices, rows, cols) and the (slice, row, col) -> RAS affine."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), np.asarray(affine)))
    vol = np.asarray(img.dataobj)
    return slice_volume(vol, orientation), slices_affine(img.affine, vol.shape, orientation)


def read_nifti_slices(path: str | Path,
                      orientation: str = "axial") -> tuple[np.ndarray, np.ndarray]:
    """(slices, rows, cols) in the BENCHMARKS layout and the (slice, row, col) affine."""
    data, aff = load_volume(path)
    return slice_volume(data, orientation), slices_affine(aff, data.shape, orientation)


def write_nifti(path: str | Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Write (slices, rows, cols) images with their (slice, row, col) -> RAS mm affine.

    Complex images are written as magnitude. The file is reoriented to the closest
    canonical RAS layout so viewers show it the usual way; the affine keeps every voxel
    where it was. Written atomically (temporary name, then rename).
    """
    import nibabel as nib

    path = Path(path)
    data = np.abs(image) if np.iscomplexobj(image) else np.asarray(image)
    img = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.float32), np.asarray(affine)))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
