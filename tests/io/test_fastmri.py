from __future__ import annotations

import h5py
import numpy as np
import pytest

from diffrecon.io import InvalidScanError, load_scan
from diffrecon.io.fastmri import read_fastmri, write_fastmri
from diffrecon.io.ismrmrd_header import parse_header
from tests.conftest import make_acquisition


def write_raw(path, kspace_fastmri, **extra):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace_fastmri)
        for k, v in extra.items():
            f.create_dataset(k, data=v)
    return path


def test_multicoil_layout_is_transposed_on_read(tmp_path):
    rng = np.random.default_rng(1)
    # fastMRI layout: (slices, coils, readout=40, phase=24)
    k = (rng.standard_normal((3, 4, 40, 24)) + 1j * rng.standard_normal((3, 4, 40, 24)))
    mask = np.zeros(24, bool)
    mask[::2] = True
    ref = rng.random((3, 40, 24)).astype(np.float32)
    p = write_raw(tmp_path / "mc.h5", k.astype(np.complex64), mask=mask, reconstruction_rss=ref)
    acq = read_fastmri(p)
    assert acq.kspace.shape == (3, 4, 24, 40)  # (slices, coils, ky, kx), readout last
    np.testing.assert_array_equal(acq.kspace[1, 2], k[1, 2].T.astype(np.complex64))
    assert acq.mask.shape == (24, 40)
    np.testing.assert_array_equal(acq.mask[:, 0], mask)
    np.testing.assert_array_equal(acq.reference[2], ref[2].T)
    assert acq.reference_kind == "reconstruction_rss"


def test_singlecoil_reads_with_one_coil_and_esc_reference(tmp_path):
    rng = np.random.default_rng(2)
    k = (rng.standard_normal((2, 16, 12)) + 1j * rng.standard_normal((2, 16, 12))).astype(
        np.complex64
    )
    esc = rng.random((2, 16, 12)).astype(np.float32)
    acq = read_fastmri(write_raw(tmp_path / "sc.h5", k, reconstruction_esc=esc))
    assert acq.kspace.shape == (2, 1, 12, 16)
    assert acq.reference_kind == "reconstruction_esc"
    assert acq.metadata["single_coil"] is True
    assert acq.fully_sampled


def test_write_read_roundtrip_is_identical(tmp_path, synthetic_acq):
    synthetic_acq.mask[::3] = False  # an undersampled scan keeps its mask
    synthetic_acq.kspace *= synthetic_acq.mask
    p = write_fastmri(synthetic_acq, tmp_path / "rt.h5")
    back = read_fastmri(p)
    np.testing.assert_array_equal(back.kspace, synthetic_acq.kspace)
    np.testing.assert_array_equal(back.mask, synthetic_acq.mask)
    np.testing.assert_array_equal(back.reference, synthetic_acq.reference)
    assert back.encoded_matrix == synthetic_acq.encoded_matrix
    assert back.recon_matrix == synthetic_acq.recon_matrix
    assert back.fov_mm == synthetic_acq.fov_mm
    assert back.metadata["protocol_name"] == "synthetic"
    with h5py.File(p) as f:  # the file itself is in fastMRI's layout
        assert f["kspace"].shape == (2, 4, 24, 32)
        assert f["mask"].shape == (32,)
        info = parse_header(f["ismrmrd_header"][()])
    assert info.encoded_matrix == (24, 32, 1)


def test_header_matrix_and_fov_are_parsed(tmp_path):
    acq = make_acquisition(ny=20, nx=16)
    acq.recon_matrix = (8, 10, 1)
    acq.fov_mm = (160.0, 200.0, 5.0)
    back = read_fastmri(write_fastmri(acq, tmp_path / "h.h5"))
    assert back.encoded_matrix == (16, 20, 1)
    assert back.recon_matrix == (8, 10, 1)
    assert back.fov_mm == (160.0, 200.0, 5.0)
    assert back.voxel_size_mm == (5.0, 10.0, 10.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"this is not hdf5 at all"), "not an HDF5 file"),
        (lambda p: write_raw(p, np.zeros(3), other=np.zeros(2))
         and None, "'kspace' has rank 1"),
        (lambda p: h5py.File(p, "w").create_dataset("other", data=np.zeros(3)),
         "no 'kspace' dataset"),
        (lambda p: write_raw(p, np.zeros((1, 2, 4, 4), np.complex64)), "k-space is all zeros"),
        (lambda p: write_raw(p, np.zeros((0, 2, 4, 4), np.complex64)), "k-space is empty"),
        (lambda p: write_raw(p, np.full((1, 2, 4, 4), np.nan, np.complex64)),
         "k-space contains NaN or Inf"),
        (lambda p: write_raw(p, np.ones((1, 2, 4, 4), np.float32)), "expected complex"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, make, message):
    p = tmp_path / "bad.h5"
    obj = make(p)
    if hasattr(obj, "file"):
        obj.file.close()
    with pytest.raises(InvalidScanError) as err:
        load_scan(p)
    assert str(err.value).startswith("bad.h5: ")
    assert message in str(err.value)


def test_truncated_file(tmp_path, synthetic_acq):
    p = write_fastmri(synthetic_acq, tmp_path / "full.h5")
    data = p.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidScanError, match=r"^cut\.h5: truncated or corrupt"):
        load_scan(cut)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InvalidScanError, match=r"^nope\.h5: file does not exist"):
        load_scan(tmp_path / "nope.h5")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InvalidScanError, match=r"^x\.txt: unrecognised format"):
        load_scan(tmp_path / "x.txt")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(InvalidScanError, match=r"^empty\.h5: file is empty"):
        load_scan(tmp_path / "empty.h5")


def test_declared_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    """A 1-kB file declaring 64 x 32 x 4096 x 4096 complex64 (256 GiB, chunked and empty)
    is refused by its header, naming the file and the budget; NIfTI likewise; the budget
    comes from DIFFRECON_MAX_SCAN_GB."""
    import nibabel as nib

    from diffrecon.io.nifti import load_volume

    bomb = tmp_path / "bomb.h5"
    with h5py.File(bomb, "w") as f:
        f.create_dataset("kspace", shape=(64, 32, 4096, 4096), dtype=np.complex64,
                         chunks=(1, 1, 64, 64))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(InvalidScanError) as err:
        load_scan(bomb)
    assert str(err.value) == ("bomb.h5: 'kspace' declares 64 x 32 x 4096 x 4096 values "
                              "(256.0 GiB), more than the memory budget of 16.0 GiB "
                              "(DIFFRECON_MAX_SCAN_GB)")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.int16)
    big = tmp_path / "big.nii"
    nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.eye(4), hdr).to_filename(big)
    with open(big, "r+b") as fh:  # the header's dims say 2048^3 (32 GiB as float32)
        fh.seek(40)
        fh.write(np.array([3, 2048, 2048, 2048, 1, 1, 1, 1], np.int16).tobytes())
    monkeypatch.setenv("DIFFRECON_MAX_SCAN_GB", "8")
    with pytest.raises(InvalidScanError, match=r"^big.nii: the NIfTI header declares "
                                               r"2048 x 2048 x 2048 values \(32.0 GiB\), more "
                                               r"than the memory budget of 8.0 GiB"):
        load_volume(big)


def test_readout_oversampling_is_removed_as_the_header_says(tmp_path):
    """Encoded readout 64, reconstruction matrix 32 (fastMRI's 640 -> 320): the image is the
    central 32 columns of the oversampled one, values kept; the field of view halves; a scan
    whose matrices agree is untouched."""
    from dataclasses import replace

    from diffrecon.io.records import remove_readout_oversampling

    acq = make_acquisition(n_slices=2, n_coils=3, ny=24, nx=64)
    over = replace(acq, recon_matrix=(32, 24, 1), fov_mm=(256.0, 96.0, 3.0), reference=None,
                   reference_kind=None)
    back = load_scan(write_fastmri(over, tmp_path / "os.h5"))
    assert back.kspace.shape == (2, 3, 24, 32) and back.mask.shape == (24, 32)
    assert back.fov_mm[0] == pytest.approx(128.0) and back.encoded_matrix[0] == 32

    def image(k):
        k = np.fft.ifftshift(k, axes=(-2, -1))
        return np.fft.fftshift(np.fft.ifft2(k, norm="ortho"), axes=(-2, -1))

    np.testing.assert_allclose(image(back.kspace), image(acq.kspace)[..., 16:48], atol=1e-5)
    assert remove_readout_oversampling(acq) is acq
    two_d = replace(over, mask=np.random.default_rng(0).random((24, 64)) < 0.5)
    assert remove_readout_oversampling(two_d) is two_d  # not whole readout lines: as it is
