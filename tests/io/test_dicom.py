from __future__ import annotations

import numpy as np
import pytest

from diffrecon.io import InvalidScanError
from diffrecon.io.dicom import read_ct_volume, read_dicom_series
from diffrecon.io.sinogram import CTAcquisition, read_sinogram, write_sinogram
from tests.conftest import DATA, need


def write_series(folder, n=4, z0=-10.0, dz=2.5, spacing=(0.8, 0.6), uid="1.2.3.4", seed=0,
                 positions=None, rescale=True, order=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 2000, size=(n, 6, 5)).astype(np.int16)
    positions = positions if positions is not None else [z0 + i * dz for i in range(n)]
    for i in order if order is not None else range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uid
        ds.PatientName = "Test^Patient"
        ds.Rows, ds.Columns = 6, 5
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-20.0, -30.0, positions[i]]
        ds.PixelSpacing = list(spacing)
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels[i].tobytes()
        ds.save_as(str(folder / f"img{i:03d}.dcm"), enforce_file_format=True)
    return pixels


def test_series_sorted_by_position_in_hu_with_geometry(tmp_path):
    pixels = write_series(tmp_path / "s", order=[2, 0, 3, 1])
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, pixels.astype(np.float32) - 1024)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.6))
    # (slice, row, col) -> RAS: DICOM LPS x, y change sign
    np.testing.assert_allclose(vol.affine @ [1, 2, 3, 1], [20 - 3 * 0.6, 30 - 2 * 0.8, -7.5, 1])
    assert vol.metadata["PatientName"] == "Test^Patient"
    # in the BENCHMARKS axial layout the columns run from the patient's left to right
    axial = read_ct_volume(tmp_path / "s")
    np.testing.assert_array_equal(axial.hu[0], (pixels[0].astype(np.float32) - 1024)[:, ::-1])
    assert axial.affine[0, 2] > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(positions=[0.0, 2.5, 2.5, 7.5]), "duplicated slice positions"),
    (dict(positions=[0.0, 2.5, 5.0, 9.0]), "non-uniform slice spacing"),
    (dict(rescale=False), "missing RescaleSlope/RescaleIntercept"),
])
def test_bad_series(tmp_path, kwargs, message):
    write_series(tmp_path / "s", **kwargs)
    with pytest.raises(InvalidScanError, match=message):
        read_dicom_series(tmp_path / "s")


def test_mixed_series_are_refused_or_chosen(tmp_path):
    write_series(tmp_path / "m", uid="1.2.3.4")
    write_series(tmp_path / "m2", uid="1.2.3.5", n=3)
    for f in (tmp_path / "m2").iterdir():
        f.rename(tmp_path / "m" / f"b_{f.name}")
    with pytest.raises(InvalidScanError, match=r"^m: holds 2 series .* choose one"):
        read_dicom_series(tmp_path / "m")
    assert read_dicom_series(tmp_path / "m", series_uid="1.2.3.5").hu.shape == (3, 6, 5)


def test_real_dicom_series():
    vol = read_dicom_series(need(DATA / "ct" / "totalsegmentator" / "example_ct_dicom"))
    assert vol.hu.shape == (20, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert vol.hu.min() >= -1100 and 500 < vol.hu.max() < 4000  # air to bone, in HU
    two = read_dicom_series(need(DATA / "ct" / "lungmask"))
    assert two.hu.shape == (2, 512, 512)


def test_sinogram_file_roundtrip_and_errors(tmp_path):
    acq = CTAcquisition("s", np.random.rand(2, 8, 11).astype(np.float32),
                        np.linspace(0, np.pi, 8, endpoint=False), "fan-flat", 1.5, (16, 16),
                        1.0, 300.0, 150.0, reference=np.zeros((2, 16, 16), np.float32))
    back = read_sinogram(write_sinogram(acq, tmp_path / "s.h5"))
    np.testing.assert_array_equal(back.sinogram, acq.sinogram)
    np.testing.assert_array_equal(back.angles, acq.angles)
    assert (back.geometry, back.det_spacing, back.source_origin, back.image_shape) == (
        "fan-flat", 1.5, 300.0, (16, 16))
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("sinogram", data=np.zeros((2, 3)))
    with pytest.raises(InvalidScanError, match="not a diffrecon sinogram file"):
        read_sinogram(tmp_path / "x.h5")


def test_one_dicom_file_and_a_series_chosen_by_its_last_digits(tmp_path):
    from diffrecon.io.dicom import read_ct_volume

    pixels = write_series(tmp_path / "one", n=1)
    vol = read_ct_volume(tmp_path / "one" / "img000.dcm")
    assert vol.name == "img000" and vol.hu.shape == (1, 6, 5)
    np.testing.assert_array_equal(np.sort(vol.hu.ravel()),
                                  np.sort(pixels.astype(np.float32).ravel() - 1024))
    write_series(tmp_path / "m", n=2, uid="1.2.840.99.1002")
    write_series(tmp_path / "m2", n=3, uid="1.2.840.99.2002", seed=1)
    for f in (tmp_path / "m2").iterdir():
        f.rename(tmp_path / "m" / f"b_{f.name}")
    assert read_ct_volume(tmp_path / "m", series_uid="2002").hu.shape[0] == 3
    with pytest.raises(InvalidScanError, match=r"^m: no series ends with '3003'"):
        read_ct_volume(tmp_path / "m", series_uid="3003")
    with pytest.raises(InvalidScanError, match=r"^m: more than one series ends with .002."):
        read_ct_volume(tmp_path / "m", series_uid="002")
    (tmp_path / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(InvalidScanError, match="^x.dcm: not a CT volume"):
        read_ct_volume(tmp_path / "x.dcm")
