"""NIfTI volumes in and out, and the one function that slices volumes by orientation.

Slice layouts are those of BENCHMARKS.md, on volumes reoriented to canonical RAS:
- axial    ``flipud(vol[:, :, z].T)``: rows anterior -> posterior, columns left -> right;
- coronal  ``flipud(vol[:, y, :].T)``: rows superior -> inferior, columns left -> right;
- sagittal ``flipud(vol[x, :, :].T)``: rows superior -> inferior, columns posterior -> anterior.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrecon.io.errors import InvalidScanError

ORIENTATIONS = ("axial", "coronal", "sagittal")
_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def slice_volume(vol_ras: np.ndarray, orientation: str) -> np.ndarray:
    """(X, Y, Z) canonical RAS volume -> (slices, rows, cols) in the BENCHMARKS layout."""
    if orientation not in _SLICE_AXIS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    axis = _SLICE_AXIS[orientation]
    moved = np.moveaxis(vol_ras, axis, 0)  # (slices, a, b) with (a, b) the other axes in order
    return np.ascontiguousarray(np.flip(np.swapaxes(moved, 1, 2), axis=1))


def unslice_volume(slices: np.ndarray, orientation: str) -> np.ndarray:
    """Inverse of :func:`slice_volume`: (slices, rows, cols) -> (X, Y, Z) RAS volume."""
    axis = _SLICE_AXIS[orientation]
    moved = np.swapaxes(np.flip(slices, axis=1), 1, 2)
    return np.ascontiguousarray(np.moveaxis(moved, 0, axis))


def pad_or_crop(x: np.ndarray, size: int | tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Centre pad (with ``fill``) or crop the last two axes to ``size`` (one int: square).

    A crop keeps ``n[(n - size) // 2:][:size]``; a pad puts ``(size - n) // 2`` before.
    """
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    out = x
    for axis, size in zip((-2, -1), sizes):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad, constant_values=fill)
    return out


def slices_affine(ras_affine: np.ndarray, shape_ras: tuple[int, int, int], orientation: str):
    """Affine from (slice, row, col) indices to mm, given the RAS volume's affine."""
    n = np.asarray(shape_ras)
    axis = _SLICE_AXIS[orientation]
    others = [a for a in range(3) if a != axis]
    # (s, r, c) -> RAS voxel index: vox[axis] = s, vox[others[1]] = n - 1 - r, vox[others[0]] = c
    m = np.zeros((4, 4))
    m[axis, 0] = 1
    m[others[1], 1] = -1
    m[others[1], 3] = n[others[1]] - 1
    m[others[0], 2] = 1
    m[3, 3] = 1
    return ras_affine @ m


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file reoriented to canonical RAS: (data float32, affine)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InvalidScanError(path, "file does not exist")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise InvalidScanError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidScanError(path, f"NIfTI volume has rank {data.ndim}, expected 3")
    if not np.isfinite(data).all():
        raise InvalidScanError(path, "NIfTI volume contains NaN or Inf values")
    return data, img.affine


def reslice(data: np.ndarray, affine: np.ndarray, orientation: str = "axial"):
    """Any (i, j, k) array with its voxel -> RAS affine, in the BENCHMARKS slice layout:
    (slices, rows, cols) and the (slice, row, col) -> RAS affine."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), np.asarray(affine)))
    vol = np.asarray(img.dataobj)
    return slice_volume(vol, orientation), slices_affine(img.affine, vol.shape, orientation)


def read_nifti_slices(path: str | Path, orientation: str = "axial"):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.abs(image) if np.iscomplexobj(image) else np.asarray(image)
    img = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.float32), np.asarray(affine)))
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(path.name[: -len(suffix)] + ".tmp" + suffix)
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path
