"""DICOM series out: geometry and HU round trip, de-identification, a validator, and a real
Orthanc PACS receiving the series by STOW-RS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from diffrecon.io.dicom import read_dicom_series, write_dicom_series
from tests.conftest import free_port


def oblique_affine():
    """(slice, row, col) -> RAS with a small rotation about z, 2.5 mm slices, 0.8/0.7 mm."""
    a = np.deg2rad(10)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, 0] = rot @ [0, 0, 2.5]
    aff[:3, 1] = rot @ [0, -0.8, 0]
    aff[:3, 2] = rot @ [0.7, 0, 0]
    aff[:3, 3] = [12.0, -30.0, 40.0]
    return aff


SOURCE = {"PatientName": "Doe^Jane", "PatientID": "12345", "StudyInstanceUID": "1.2.3.99",
          "StudyDate": "20260101"}


def test_ct_series_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, size=(4, 10, 12)).astype(np.float32)
    files = write_dicom_series(tmp_path / "ct", hu, oblique_affine(), "CT",
                               "DDS ct-axial-128, 16 views", SOURCE)
    assert len(files) == 4
    vol = read_dicom_series(tmp_path / "ct")
    # the same voxels at the same places: compare on the canonical RAS grid (the reader
    # orders slices along DICOM's normal, which may run the other way)
    from diffrecon.io.nifti import reslice

    ours, ours_aff = reslice(np.round(hu), oblique_affine())
    back, back_aff = reslice(vol.hu, vol.affine)
    np.testing.assert_allclose(back, ours, atol=0.5)
    np.testing.assert_allclose(back_aff, ours_aff, atol=1e-3)
    tags = [pydicom.dcmread(str(f)) for f in files]
    assert {(t.WindowCenter, t.WindowWidth) for t in tags}.__len__() == 1  # one per series
    assert {t.SeriesInstanceUID for t in tags}.__len__() == 1
    assert {t.SOPInstanceUID for t in tags}.__len__() == 4
    t = tags[0]
    assert t.StudyInstanceUID == "1.2.3.99" and t.PatientName == "Doe^Jane"
    assert list(t.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert t.SeriesDescription == "DDS ct-axial-128, 16 views"
    assert t.SOPClassUID == pydicom.uid.CTImageStorage


def test_mr_series_geometry_and_deidentification(tmp_path):
    img = np.random.default_rng(1).random((3, 8, 8)) * (1 + 1j)
    files = write_dicom_series(tmp_path / "mr", img, oblique_affine(), "MR", "DDS brain",
                               SOURCE, deidentify=True)
    t = pydicom.dcmread(str(files[0]))
    assert t.SOPClassUID == pydicom.uid.MRImageStorage
    assert t.PatientName == "ANONYMOUS" and t.PatientID != "12345" and t.StudyDate == ""
    assert t.pixel_array.max() <= 4095
    from diffrecon.io.dicom import _series

    (items,) = _series(tmp_path / "mr").values()
    assert len(items) == 3
    with pytest.raises(ValueError, match="modality must be CT or MR"):
        write_dicom_series(tmp_path / "x", img, oblique_affine(), "PET", "x")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_validator_reports_no_errors(tmp_path, modality):
    hu = np.zeros((2, 8, 8), np.float32)
    files = write_dicom_series(tmp_path / "v", hu, oblique_affine(), modality, "validation",
                               SOURCE)
    out = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines()
              if line.startswith("Error")]
    assert errors == []


def test_series_arrives_in_orthanc_by_stow_rs(orthanc, tmp_path):
    import httpx

    from diffrecon.io.pacs import PacsError, stow_rs

    hu = np.random.default_rng(2).uniform(-1000, 1000, (5, 16, 16)).astype(np.float32)
    files = write_dicom_series(tmp_path / "s", hu, oblique_affine(), "CT", "DDS to PACS",
                               SOURCE, deidentify=True)
    assert stow_rs(orthanc.url + "/dicom-web", files)["instances"] == 5
    (series_id,) = httpx.get(orthanc.url + "/series").json()
    series = httpx.get(f"{orthanc.url}/series/{series_id}").json()
    assert len(series["Instances"]) == 5
    assert series["MainDicomTags"]["SeriesDescription"] == "DDS to PACS"
    tags = httpx.get(f"{orthanc.url}/instances/{series['Instances'][0]}/simplified-tags").json()
    assert tags["Modality"] == "CT" and tags["PatientName"] == "ANONYMOUS"
    # a PACS that is not there: retried, then a clear error; the files stay on disk
    with pytest.raises(PacsError, match="failed after 2 attempts"):
        stow_rs(f"http://127.0.0.1:{free_port()}/dicom-web", files, retries=1, backoff=0.01)
    assert all(f.exists() for f in files)


def test_series_arrives_by_c_store_and_a_resend_is_the_same_series(orthanc, tmp_path):
    from diffrecon.io.pacs import PacsError, c_store, send

    hu = np.random.default_rng(3).uniform(-1000, 1000, (3, 16, 16)).astype(np.float32)
    files = write_dicom_series(tmp_path / "s", hu, oblique_affine(), "CT", "FBP, 8 views",
                               SOURCE, uid_seed="digest/fbp")
    assert send(orthanc.dicom, files) == {"status": 0, "instances": 3,
                                          "destination": orthanc.dicom}
    (series,) = orthanc.series()
    assert len(series["Instances"]) == 3
    tags = orthanc.tags(series["Instances"][0])
    assert tags["PatientName"] == "Doe^Jane" and tags["StudyInstanceUID"] == "1.2.3.99"
    # the same result exported again: the same UIDs, so the PACS holds one series of 3
    again = write_dicom_series(tmp_path / "t", hu, oblique_affine(), "CT", "FBP, 8 views",
                               SOURCE, uid_seed="digest/fbp")
    assert [pydicom.dcmread(str(f)).SOPInstanceUID for f in again] == \
        [pydicom.dcmread(str(f)).SOPInstanceUID for f in files]
    send(orthanc.dicom, again)
    (series,) = orthanc.series()
    assert len(series["Instances"]) == 3
    # nobody listening: retried, then a clear error; the files stay
    with pytest.raises(PacsError, match=r"C-STORE to dicom://ORTHANC@127.0.0.1:\d+ failed "
                                        r"after 2 attempts \(no association"):
        c_store("127.0.0.1", free_port(), files, retries=1, backoff=0.01, timeout=2)
    assert all(f.exists() for f in files)


def test_destinations_are_parsed_or_refused():
    from diffrecon.io.pacs import parse_destination

    assert parse_destination("dicom://PACS@10.0.0.1:104") == {
        "kind": "c-store", "host": "10.0.0.1", "port": 104, "called": "PACS",
        "calling": "DIFFRECON"}
    assert parse_destination("dicom://ME:PACS@h:11112")["calling"] == "ME"
    assert parse_destination("http://127.0.0.1:8042/dicom-web/") == {
        "kind": "stow-rs", "url": "http://127.0.0.1:8042/dicom-web"}
    with pytest.raises(ValueError, match="expected http"):
        parse_destination("pacs.example.org:104")


def test_source_attributes_from_dicom_and_raw_headers():
    from diffrecon.io.dicom import source_attributes

    raw = {"patient_name": "Doe^Jane", "patient_id": "12345", "study_instance_uid": "1.2.3",
           "protocol_name": "gre", "frequency_hz": 123.0e6, "attrs": {"max": "1"}}
    assert source_attributes(raw) == {"PatientName": "Doe^Jane", "PatientID": "12345",
                                      "StudyInstanceUID": "1.2.3"}
    dicom = {"PatientName": "Roe^Rich", "StudyDate": "20250102", "SeriesInstanceUID": "9.9",
             "Modality": "CT"}
    assert source_attributes(dicom, PatientID="77", StudyDate=None) == {
        "PatientName": "Roe^Rich", "StudyDate": "20250102", "PatientID": "77"}
    with pytest.raises(ValueError, match="not a study or patient attribute: SeriesNumber"):
        source_attributes({}, SeriesNumber="3")


def test_deidentified_uids_are_replaced_consistently(tmp_path):
    img = np.ones((2, 8, 8), np.float32)
    a = write_dicom_series(tmp_path / "a", img, oblique_affine(), "MR", "a", SOURCE,
                           deidentify=True)
    b = write_dicom_series(tmp_path / "b", img, oblique_affine(), "MR", "b", SOURCE,
                           deidentify=True)
    ta, tb = pydicom.dcmread(str(a[0])), pydicom.dcmread(str(b[0]))
    assert ta.StudyInstanceUID != SOURCE["StudyInstanceUID"]
    assert ta.StudyInstanceUID == tb.StudyInstanceUID  # two series of one study stay together
    assert ta.SeriesInstanceUID != tb.SeriesInstanceUID
    assert ta.PatientIdentityRemoved == "YES" and "12345" not in str(ta)


def test_a_series_killed_half_written_is_never_in_place(tmp_path, monkeypatch):
    """A write that dies after 3 of 8 files leaves the previous complete series in place and
    nothing partial visible; the hidden staging folder of a killed writer is removed by the
    next write."""
    img = np.linspace(-1000, 1000, 8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)
    folder = tmp_path / "scan_fbp_dicom"
    first = write_dicom_series(folder, img, np.eye(4), "CT", "FBP", uid_seed="a")
    assert len(first) == 8
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real, count = pydicom.Dataset.save_as, [0]

    def dying(self, *args, **kwargs):
        count[0] += 1
        if count[0] > 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", dying)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(folder, img + 1, np.eye(4), "CT", "FBP", uid_seed="b")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_fbp_dicom"]
    monkeypatch.setattr(pydicom.Dataset, "save_as", real)
    (tmp_path / ".scan_fbp_dicom.99999.partial").mkdir()  # a killed writer's staging
    (tmp_path / ".scan_fbp_dicom.99999.partial" / "0001.dcm").write_bytes(b"half")
    write_dicom_series(folder, img + 1, np.eye(4), "CT", "FBP", uid_seed="b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_fbp_dicom"]
    assert len(list(folder.iterdir())) == 8
    assert read_dicom_series(folder).hu.min() == pytest.approx(-999, abs=1)  # the new one


def test_an_invalid_uid_is_never_printed(tmp_path, caplog, recwarn):
    """pydicom's validation would warn with the value (a UID carrying a name): reading and
    writing here log and warn nothing of it."""
    import logging

    caplog.set_level(logging.DEBUG)
    src = {"StudyInstanceUID": "1.2.840.113619.2.55.3.Jane-Doe", "PatientName": "Doe^Jane"}
    write_dicom_series(tmp_path / "s", np.zeros((2, 8, 8), np.float32), np.eye(4), "CT", "x",
                       src)
    read_dicom_series(tmp_path / "s")
    said = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "Jane-Doe" not in said and "Doe^Jane" not in said


@pytest.mark.parametrize("modality", ["mri", "ct"])
def test_a_std_map_is_written_beside_the_image_as_its_own_series(tmp_path, modality):
    """NIfTI, a DICOM series of the same study and frame of reference (its own series UID
    and number, "STD uncertainty" leading the description and UNCERTAINTY in ImageType,
    series UIDs from the std's own content, MR grey levels of the image's
    scale) and the PNG with the std tiles beside the image's."""
    from PIL import Image

    from diffrecon.io.outputs import write_outputs
    from diffrecon.io.records import Volume

    g = np.random.default_rng(0)
    image = g.uniform(0, 1000, (3, 12, 10)).astype(np.float32)
    std = g.uniform(0, 50, (3, 12, 10)).astype(np.float32)
    kw = dict(name="s1", method="dds", modality=modality, affine=np.diag([2.0, 1.0, 1.0, 1]),
              description="DDS brain, R=4", source={"StudyInstanceUID": "1.2.3.4",
                                                    "SeriesNumber": "7"})
    plain = write_outputs(Volume(image=image, **kw), ["nifti", "dicom", "png"], tmp_path / "a",
                          uid_seed="d/dds")
    paths = write_outputs(Volume(image=image, std=std, **kw), ["nifti", "dicom", "png"],
                          tmp_path / "b", uid_seed="d/dds")
    assert [p.replace("/b/", "/a/") for p in paths[:3]] == plain  # the image's paths first
    assert [p.rsplit("/", 1)[1] for p in paths[3:]] == ["s1_dds_std.nii.gz", "s1_dds_std_dicom"]
    import nibabel as nib

    nii = np.asarray(nib.load(paths[3]).dataobj)  # the std itself, in the image's units
    assert np.allclose(np.sort(nii.ravel()), np.sort(std.ravel()), atol=1e-4)
    img_ds = [pydicom.dcmread(str(f)) for f in sorted((tmp_path / "b/s1_dds_dicom").glob("*"))]
    std_ds = [pydicom.dcmread(str(f)) for f in sorted((tmp_path / "b/s1_dds_std_dicom").glob("*"))]
    assert len(std_ds) == 3
    assert std_ds[0].StudyInstanceUID == img_ds[0].StudyInstanceUID == "1.2.3.4"
    assert std_ds[0].FrameOfReferenceUID == img_ds[0].FrameOfReferenceUID
    assert std_ds[0].SeriesInstanceUID != img_ds[0].SeriesInstanceUID
    assert {d.SOPInstanceUID for d in std_ds}.isdisjoint({d.SOPInstanceUID for d in img_ds})
    assert (img_ds[0].SeriesNumber, std_ds[0].SeriesNumber) == (7, 8)
    assert std_ds[0].SeriesDescription == "STD uncertainty: DDS brain, R=4"
    assert list(std_ds[0].ImageType)[-1] == "UNCERTAINTY"
    assert "UNCERTAINTY" not in list(img_ds[0].ImageType)
    # a long description is cut at 64 characters: the marker stays
    long = dict(kw, description="DDS brain-t1-axial-128, as acquired, 25.3 % of k-space, "
                                "equispaced, 8 virtual coils")
    again = write_outputs(Volume(image=image, std=2 * std, **long), ["dicom"], tmp_path / "c",
                          uid_seed="d/dds")
    other = pydicom.dcmread(str(sorted(Path(again[1]).glob("*"))[0]))
    assert other.SeriesDescription.startswith("STD uncertainty: DDS brain-t1-axial-128")
    # another std (e.g. another --std-scale) of the same image: another series
    assert other.SeriesInstanceUID != std_ds[0].SeriesInstanceUID
    assert std_ds[1].ImagePositionPatient == img_ds[1].ImagePositionPatient
    px = np.stack([d.pixel_array for d in std_ds]).astype(np.float64)
    if modality == "ct":  # HU as written
        assert np.abs(px - np.round(std)).max() == 0
    else:  # on the image's grey scale: std / max(image) * 4095
        assert np.abs(px - np.round(std / image.max() * 4095)).max() == 0
    # the PNG: the std tiles beside the image's, as wide again
    w_plain = Image.open(plain[2]).size[0]
    assert Image.open(paths[2]).size[0] == 2 * w_plain
