from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from diffrecon.common.geometry import ORIENTATIONS, slice_volume, slices_affine, unslice_volume
from diffrecon.io.nifti import read_nifti_slices, write_nifti
from diffrecon.io.records import axial_affine


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_slice_layout_matches_benchmarks(orientation):
    vol = np.random.default_rng(0).random((5, 6, 7))
    s = slice_volume(vol, orientation)
    if orientation == "axial":
        expected = np.stack([np.flipud(vol[:, :, z].T) for z in range(7)])
    elif orientation == "coronal":
        expected = np.stack([np.flipud(vol[:, y, :].T) for y in range(6)])
    else:
        expected = np.stack([np.flipud(vol[x, :, :].T) for x in range(5)])
    np.testing.assert_array_equal(s, expected)
    np.testing.assert_array_equal(unslice_volume(s, orientation), vol)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_slices_affine_maps_indices_to_the_same_point(orientation):
    rng = np.random.default_rng(1)
    vol = rng.random((5, 6, 7))
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    aff[:3, 3] = [10, -20, 30]
    s = slice_volume(vol, orientation)
    sa = slices_affine(aff, vol.shape, orientation)
    for _ in range(10):
        idx = tuple(int(rng.integers(0, n)) for n in s.shape)
        mm = sa @ np.array([*idx, 1.0])
        vox = np.linalg.solve(aff, mm)[:3].round().astype(int)
        assert vol[tuple(vox)] == s[idx]


def test_write_read_keeps_geometry(tmp_path):
    img = np.random.default_rng(2).random((4, 8, 6)).astype(np.float32) + 1j
    aff = axial_affine((3.0, 2.0, 1.5), 8)
    p = write_nifti(tmp_path / "x.nii.gz", img, aff)
    loaded = nib.load(str(p))
    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    assert np.allclose(sorted(loaded.header.get_zooms()), [1.5, 2.0, 3.0])
    slices, saff = read_nifti_slices(p, "axial")
    np.testing.assert_allclose(slices, np.abs(img), rtol=1e-6)
    np.testing.assert_allclose(saff, aff, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp*"))
