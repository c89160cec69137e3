from __future__ import annotations

import numpy as np
import pytest

from diffrecon.io import InvalidScanError, load_scan
from diffrecon.io.ismrmrd_io import read_ismrmrd, write_ismrmrd
from tests.conftest import make_acquisition


def test_ismrmrd_from_real_twix_reads_back(twix_acq, tmp_path):
    p = write_ismrmrd(twix_acq, tmp_path / "raw.h5")
    back = load_scan(p)  # detected as ISMRMRD, not fastMRI
    np.testing.assert_array_equal(back.kspace, twix_acq.kspace)
    np.testing.assert_array_equal(back.mask, twix_acq.mask)
    assert back.encoded_matrix == twix_acq.encoded_matrix
    assert back.fov_mm == twix_acq.fov_mm


def test_undersampled_multislice_ismrmrd(tmp_path):
    acq = make_acquisition(n_slices=3, ny=16, nx=12)
    acq.mask[1::2] = False
    acq.kspace *= acq.mask
    back = read_ismrmrd(write_ismrmrd(acq, tmp_path / "us.h5"))
    assert back.kspace.shape == (3, 4, 16, 12)
    np.testing.assert_array_equal(back.mask, acq.mask)
    np.testing.assert_array_equal(back.kspace, acq.kspace)
    assert not back.fully_sampled


def test_ismrmrd_without_header(tmp_path):
    import h5py

    p = tmp_path / "nohdr.h5"
    with h5py.File(p, "w") as f:
        f.create_group("dataset").create_dataset("data", data=np.zeros(4))
    with pytest.raises(InvalidScanError, match=r"^nohdr\.h5: no ISMRMRD 'dataset/xml' header"):
        load_scan(p)
