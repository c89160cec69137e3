"""common.geometry: padding/cropping keeps every voxel where it is in mm."""

from __future__ import annotations

import numpy as np
import pytest

from diffrecon.common.geometry import pad_or_crop, shift_affine_for_pad_or_crop


@pytest.mark.parametrize("shape, size", [((30, 26), 32), ((40, 37), 32), ((30, 40), 32)])
def test_pad_or_crop_and_its_affine_keep_voxels_in_place(shape, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape))
    aff = np.array([[0, 0, 1.5, -20], [0, -1.2, 0, 30], [3.0, 0, 0, 5], [0, 0, 0, 1]])
    y = pad_or_crop(x, size)
    new = shift_affine_for_pad_or_crop(aff, shape, size)
    # a voxel present in both keeps its value and its position in mm
    r, c = min(shape[0], size) // 2, min(shape[1], size) // 2  # index in y
    r0 = r - (size - shape[0]) // 2 if shape[0] < size else r + (shape[0] - size) // 2
    c0 = c - (size - shape[1]) // 2 if shape[1] < size else c + (shape[1] - size) // 2
    assert y[1, r, c] == x[1, r0, c0]
    np.testing.assert_allclose(new @ [1, r, c, 1], aff @ [1, r0, c0, 1])
