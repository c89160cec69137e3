from __future__ import annotations

import numpy as np
import pytest

from diffrecon.io import InvalidScanError, load_scan
from diffrecon.io.fastmri import read_fastmri, write_fastmri
from diffrecon.io.twix import read_twix


def test_real_16_coil_scan_loads(twix_acq):
    assert twix_acq.kspace.shape == (1, 16, 128, 128)
    assert twix_acq.kspace.dtype == np.complex64
    assert twix_acq.fully_sampled
    # matrix from the loop counters and the data, not the header's base resolution (64)
    assert twix_acq.encoded_matrix == (128, 128, 1)
    assert twix_acq.fov_mm[:2] == (256.0, 256.0)
    assert twix_acq.voxel_size_mm == (3.0, 2.0, 2.0)
    assert twix_acq.metadata["twix_version"] == "VD"
    # k-space centre near the middle of the matrix (centred convention)
    e = np.abs(twix_acq.kspace[0]).sum(0)
    ky, kx = np.unravel_index(e.argmax(), e.shape)
    assert abs(ky - 64) <= 1 and abs(kx - 64) <= 1


def test_twix_to_fastmri_roundtrip_is_identical(twix_acq, tmp_path):
    back = read_fastmri(write_fastmri(twix_acq, tmp_path / "twix.h5"))
    np.testing.assert_array_equal(back.kspace, twix_acq.kspace)
    np.testing.assert_array_equal(back.mask, twix_acq.mask)
    assert back.encoded_matrix == twix_acq.encoded_matrix
    assert back.recon_matrix == twix_acq.recon_matrix
    assert back.fov_mm == twix_acq.fov_mm
    assert back.metadata["frequency_hz"] == pytest.approx(twix_acq.metadata["frequency_hz"])
    assert back.metadata["protocol_name"] == twix_acq.metadata["protocol_name"]


def test_unknown_twix_version(tmp_path):
    p = tmp_path / "junk.dat"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(InvalidScanError, match=r"^junk\.dat: unknown twix version"):
        load_scan(p)


def test_truncated_twix(twix_path, tmp_path):
    p = tmp_path / "cut.dat"
    p.write_bytes(twix_path.read_bytes()[:20000])
    with pytest.raises(InvalidScanError) as err:
        read_twix(p)
    assert str(err.value).startswith("cut.dat: ")
