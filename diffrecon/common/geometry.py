"""Image geometry in one place: slicing volumes by orientation, centre padding and cropping,
and the affine of a slice stack.

Slice layouts are those of BENCHMARKS.md, on volumes reoriented to canonical RAS:
- axial    ``flipud(vol[:, :, z].T)``: rows anterior -> posterior, columns left -> right;
- coronal  ``flipud(vol[:, y, :].T)``: rows superior -> inferior, columns left -> right;
- sagittal ``flipud(vol[x, :, :].T)``: rows superior -> inferior, columns posterior -> anterior.

The functions work on numpy arrays and, where noted, on torch tensors too (they only use
indexing, ``flip`` and axis moves that both provide).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ORIENTATIONS = ("axial", "coronal", "sagittal")
SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


# Views of an axial-layout volume (S, H, W) = (z, rows A->P, cols L->R) as the slices of
# another orientation in the layout of :func:`slice_volume`: (axis permutation, flipped axes)
# after the permutation; exact and cheap (no resampling). Used on torch tensors by
# recon.diffusion.volume.volume_view.
AXIAL_VIEWS = {"axial": ((0, 1, 2), ()), "coronal": ((1, 0, 2), (0, 1)),
               "sagittal": ((2, 0, 1), (1, 2))}


def _check(orientation: str) -> int:
    if orientation not in SLICE_AXIS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    return SLICE_AXIS[orientation]


def slice_volume(vol_ras: np.ndarray, orientation: str) -> np.ndarray:
    """(X, Y, Z) canonical RAS volume -> (slices, rows, cols) in the BENCHMARKS layout."""
    axis = _check(orientation)
    moved = np.moveaxis(vol_ras, axis, 0)  # (slices, a, b) with (a, b) the other axes in order
    return np.ascontiguousarray(np.flip(np.swapaxes(moved, 1, 2), axis=1))


def unslice_volume(slices: np.ndarray, orientation: str) -> np.ndarray:
    """Inverse of :func:`slice_volume`: (slices, rows, cols) -> (X, Y, Z) RAS volume."""
    axis = _check(orientation)
    moved = np.swapaxes(np.flip(slices, axis=1), 1, 2)
    return np.ascontiguousarray(np.moveaxis(moved, 0, axis))


def inplane_axes(orientation: str) -> tuple[int, int]:
    """The RAS axes along a slice's (rows, cols) in the BENCHMARKS layout."""
    axis = _check(orientation)
    cols, rows = (a for a in range(3) if a != axis)
    return rows, cols


def centre_offsets(n: int, size: int) -> tuple[int, int]:
    """(before, after) padding that centres n samples in size (negative: cropping); a crop
    keeps ``[(n - size) // 2:][:size]``, a pad puts ``(size - n) // 2`` before."""
    if n >= size:
        start = (n - size) // 2
        return -start, -(n - size - start)
    before = (size - n) // 2
    return before, size - n - before


def pad_or_crop(x: Any, size: int | tuple[int, int], fill: float = 0.0) -> Any:
    """Centre pad (with ``fill``) or crop the last two axes to ``size`` (one int: square).

    numpy arrays and torch tensors alike (a tensor's pad goes through torch)."""
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    out = x
    for axis, target in zip((-2, -1), sizes):
        n = out.shape[axis]
        before, after = centre_offsets(n, target)
        if before < 0:
            idx = [slice(None)] * out.ndim
            idx[axis] = slice(-before, n + after)
            out = out[tuple(idx)]
        elif before or after:
            if isinstance(out, np.ndarray):
                pad = [(0, 0)] * out.ndim
                pad[axis] = (before, after)
                out = np.pad(out, pad, constant_values=fill)
            else:
                import torch.nn.functional as F

                spec = (0, 0, before, after) if axis == -2 else (before, after)
                out = F.pad(out, spec, value=float(fill))
    return out


def slices_affine(ras_affine: np.ndarray, shape_ras: tuple[int, int, int],
                  orientation: str) -> np.ndarray:
    """Affine from (slice, row, col) indices to mm, given the RAS volume's affine."""
    n = np.asarray(shape_ras)
    axis = _check(orientation)
    others = [a for a in range(3) if a != axis]
    # (s, r, c) -> RAS voxel index: vox[axis] = s, vox[others[1]] = n - 1 - r, vox[others[0]] = c
    m = np.zeros((4, 4))
    m[axis, 0] = 1
    m[others[1], 1] = -1
    m[others[1], 3] = n[others[1]] - 1
    m[others[0], 2] = 1
    m[3, 3] = 1
    return ras_affine @ m


def shift_affine_for_pad_or_crop(affine: np.ndarray, shape: tuple[int, int],
                                 size: int | tuple[int, int]) -> np.ndarray:
    """The (slice, row, col) affine after :func:`pad_or_crop` of images of ``shape``
    (rows, cols) to ``size``: every voxel keeps its position in mm."""
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    out = np.asarray(affine, np.float64).copy()
    for axis, n, target in ((1, shape[0], sizes[0]), (2, shape[1], sizes[1])):
        before, _ = centre_offsets(n, target)
        out[:3, 3] -= out[:3, axis] * before  # new index i is old index i - before
    return out


def scale_affine(affine: np.ndarray, shape: tuple[int, int], new_shape: tuple[int, int]
                 ) -> np.ndarray:
    """The (slice, row, col) affine of images resampled in-plane from ``shape`` to
    ``new_shape`` over the same field of view (pixel centres: new index i sits at old index
    (i + 0.5) * n / n' - 0.5)."""
    out = np.asarray(affine, np.float64).copy()
    for axis, n, m in ((1, shape[0], new_shape[0]), (2, shape[1], new_shape[1])):
        f = n / m
        out[:3, 3] += out[:3, axis] * (0.5 * f - 0.5)
        out[:3, axis] *= f
    return out
