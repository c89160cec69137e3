"""DICOM series in (CT in Hounsfield units); one module for DICOM geometry.

A folder's files are grouped by SeriesInstanceUID (a folder holding several series is
refused unless one is chosen), sorted by ImagePositionPatient projected on the slice
normal (the cross product of the ImageOrientationPatient directions), and converted to
HU with RescaleSlope/RescaleIntercept. The affine maps (slice, row, col) indices to RAS
mm (DICOM's patient coordinates are LPS: x and y change sign). Duplicated or unevenly
spaced slice positions and missing rescale tags are errors; non-square pixels are kept
(the affine carries both spacings).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffrecon.common.files import atomic_folder
from diffrecon.io.errors import InvalidScanError, check_declared_size

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _quiet_pydicom() -> None:
    """pydicom's value validation warns with the offending value (e.g. a StudyInstanceUID
    with letters), which would put identifiers into logs: values are not validated when read
    or written here (the geometry and pixel checks of this module stay)."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


@dataclass
class CTVolume:
    """hu: (slices, rows, cols) float32 in HU; affine: (slice, row, col) -> RAS mm."""

    name: str
    hu: np.ndarray
    affine: np.ndarray
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3))


def _series(folder: Path) -> dict[str, list]:
    """The images of a folder (or of one DICOM file) grouped by SeriesInstanceUID."""
    import pydicom

    _quiet_pydicom()
    groups: dict[str, list] = defaultdict(list)
    files = [folder] if folder.is_file() else sorted(p for p in folder.iterdir() if p.is_file())
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=False)
        except Exception:
            continue  # not DICOM (a README, a thumbnail): skipped
        if "PixelData" not in ds:
            continue
        groups[str(getattr(ds, "SeriesInstanceUID", ""))].append((f, ds))
    return groups


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> CTVolume:
    """Read one DICOM series from a folder (or a single DICOM file: a one-slice volume)
    into a CTVolume (HU, RAS affine). ``series_uid`` chooses among several series: the whole
    UID or its end (the digits the error shows, so UIDs need not be printed whole)."""
    folder = Path(folder)
    if not folder.exists():
        raise InvalidScanError(folder, "does not exist")
    groups = _series(folder)
    if not groups:
        raise InvalidScanError(folder, "no DICOM images " + ("in the folder" if folder.is_dir()
                                                              else "(not a DICOM file)"))
    if series_uid is not None:
        chosen = [uid for uid in groups if uid == series_uid or uid.endswith(series_uid)]
        if len(chosen) != 1:
            raise InvalidScanError(folder, f"{'no' if not chosen else 'more than one'} series "
                                           f"ends with {series_uid!r}")
        items = groups[chosen[0]]
    elif len(groups) > 1:
        desc = ", ".join(f"...{uid[-8:] or '(no UID)'} ({len(v)} images)"
                         for uid, v in groups.items())
        raise InvalidScanError(folder, f"holds {len(groups)} series ({desc}); choose one "
                                       "with --series-uid (its last digits will do)")
    else:
        items = next(iter(groups.values()))
    first = items[0][1]
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if tag not in first:
            raise InvalidScanError(folder, f"missing {tag}: the slice geometry is unknown")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # along a row (columns increase), along a column
    normal = np.cross(row_dir, col_dir)
    check_declared_size(folder, "the DICOM series", (len(items), int(getattr(first, "Rows", 0)),
                                                     int(getattr(first, "Columns", 0))), 4)
    slices = []
    for f, ds in items:
        if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
            raise InvalidScanError(f, "missing RescaleSlope/RescaleIntercept: cannot convert "
                                      "to Hounsfield units")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise InvalidScanError(folder, "images of the series differ in orientation")
        pos = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # truncated pixel data, an unsupported transfer syntax
            raise InvalidScanError(f, f"cannot decode the pixel data ({type(exc).__name__}: "
                                      f"{exc})") from None
        hu = pixels.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((float(pos @ normal), pos, hu))
    slices.sort(key=lambda s: s[0])
    d = np.array([s[0] for s in slices])
    if len(d) > 1:
        gaps = np.diff(d)
        if np.any(gaps < 1e-3):
            raise InvalidScanError(folder, "duplicated slice positions (two images at the same "
                                           "place along the slice normal)")
        if np.max(np.abs(gaps - np.median(gaps))) > 0.01 * np.median(gaps) + 1e-3:
            raise InvalidScanError(folder, f"non-uniform slice spacing ({gaps.min():.3f} to "
                                           f"{gaps.max():.3f} mm)")
        dz = float(np.median(gaps))
    else:
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    shapes = {s[2].shape for s in slices}
    if len(shapes) > 1:
        raise InvalidScanError(folder, f"images of the series differ in size: {sorted(shapes)}")
    dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing, column spacing
    lps = np.eye(4)
    lps[:3, 0] = normal * dz
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = row_dir * dc
    lps[:3, 3] = slices[0][1]
    meta = {k: str(first.get(k, "")) for k in SOURCE_KEYWORDS + ("SeriesInstanceUID",
                                                                  "SeriesDescription",
                                                                  "Modality")
            if k in first}
    from diffrecon.io.records import scan_name

    return CTVolume(scan_name(folder), np.stack([s[2] for s in slices]), LPS_TO_RAS @ lps,
                    str(folder), meta)


def read_ct_volume(path: str | Path, series_uid: str | None = None) -> CTVolume:
    """A CT volume as axial slices in the BENCHMARKS layout (RAS: rows anterior ->
    posterior, columns patient left -> right), from a NIfTI file, a DICOM folder (the
    series ``series_uid`` where it holds several) or a single DICOM file."""
    from diffrecon.io.nifti import read_nifti_slices, reslice
    from diffrecon.io.records import scan_name

    path = Path(path)
    if path.is_dir() or _is_dicom_file(path):
        vol = read_dicom_series(path, series_uid)
        # DICOM shows the patient's right on the left: reslice into the RAS axial layout
        vol.hu, vol.affine = reslice(vol.hu, vol.affine, "axial")
        vol.hu = np.ascontiguousarray(vol.hu, dtype=np.float32)
        return vol
    if path.name.endswith((".nii", ".nii.gz")):
        hu, aff = read_nifti_slices(path, "axial")
        return CTVolume(scan_name(path), hu.astype(np.float32), aff, str(path))
    raise InvalidScanError(path, "not a CT volume: expected a NIfTI file, a DICOM folder or "
                                 "a DICOM file")


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


# Study and patient attributes a derived series inherits from its source
SOURCE_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
                   "StudyDescription", "ReferringPhysicianName", "FrameOfReferenceUID",
                   "PatientPosition")
# the same attributes as the ISMRMRD header (and so the raw-data readers) name them
_HEADER_KEYS = {"patient_name": "PatientName", "patient_id": "PatientID",
                "study_instance_uid": "StudyInstanceUID", "patient_birthdate": "PatientBirthDate",
                "patient_sex": "PatientSex", "study_date": "StudyDate",
                "study_time": "StudyTime", "accession_number": "AccessionNumber",
                "study_description": "StudyDescription",
                "frame_of_reference_uid": "FrameOfReferenceUID",
                "patient_position": "PatientPosition"}


def source_attributes(metadata: dict | None, **overrides: str | None) -> dict[str, str]:
    """The study/patient attributes (DICOM keywords) of a source, from a reader's metadata
    (DICOM keywords from the DICOM reader, ISMRMRD names from the raw-data readers), with
    ``overrides`` (keywords given on the command line) taking precedence when not None."""
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        kw = key if key in SOURCE_KEYWORDS else _HEADER_KEYS.get(key)
        if kw and isinstance(value, str | int | float) and str(value):
            out[kw] = str(value)
    out.update({k: str(v) for k, v in overrides.items() if v is not None})
    unknown = set(out) - set(SOURCE_KEYWORDS)
    if unknown:
        raise ValueError(f"not a study or patient attribute: {', '.join(sorted(unknown))}")
    return out


def _ds(v: float) -> str:
    """A decimal string within DICOM's 16 characters (about 10 significant digits)."""
    for digits in range(10, 3, -1):
        text = f"{float(v):.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{float(v):.3e}"


def _uid(*seed: str) -> str:
    """A new UID; with a seed, the same UID for the same seed (re-exporting a result then
    gives the same series, which a PACS recognises as already stored)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["diffrecon", *seed] if seed else None)


DEIDENTIFIED = {"PatientName": "ANONYMOUS", "PatientBirthDate": "", "PatientSex": "",
                "PatientAddress": "", "OtherPatientIDs": "", "ReferringPhysicianName": "",
                "InstitutionName": "", "AccessionNumber": ""}


def deidentified_source(source: dict | None) -> dict[str, str]:
    """Study/patient attributes with the identifiers replaced (DICOM basic profile): the
    name by ANONYMOUS, the patient ID by a one-way hash, the study and frame-of-reference
    UIDs by UIDs derived from them (the series of one study stay together), dates, accession
    number, descriptions and physicians dropped. Marked ``PatientIdentityRemoved`` and
    applied once (a de-identified source is returned as it is)."""
    import hashlib

    src = dict(source or {})
    if src.get("PatientIdentityRemoved") == "YES":
        return src
    out = {"PatientIdentityRemoved": "YES", "PatientName": DEIDENTIFIED["PatientName"],
           "PatientID": hashlib.sha256(str(src.get("PatientID", "")).encode()).hexdigest()[:16]}
    for uid in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if src.get(uid):
            out[uid] = _uid("deid", src[uid])
    if "PatientPosition" in src:
        out["PatientPosition"] = src["PatientPosition"]
    return out


def write_dicom_series(
    folder: str | Path,
    image: np.ndarray,
    affine: np.ndarray,
    modality: str,
    series_description: str,
    source: dict | None = None,
    deidentify: bool = False,
    derivation: str = "reconstructed by diffrecon",
    window: tuple[float, float] | None = None,
    uid_seed: str | None = None,
    series_key: str = "",
    peak: float | None = None,
    image_kind: str | None = None,
) -> list[Path]:
    """Write (slices, rows, cols) images as a DICOM series, one file per slice.

    CT: HU as int16 with RescaleSlope 1 / RescaleIntercept 0 (CT Image Storage). MR:
    magnitude scaled to 0..4095 (MR Image Storage). ``affine`` maps (slice, row, col) to RAS
    mm; positions and orientation are written in DICOM's LPS. Study and patient attributes
    come from ``source`` (a dict of DICOM keywords, e.g. from the input's metadata) unless
    ``deidentify`` replaces the identifiers (patient ID by a one-way hash). One window
    centre/width for the whole series (from the data unless given). Files are written
    into a hidden staging folder that replaces ``folder`` whole when complete (never a
    partial series in place).

    UIDs: new ones, or derived from ``uid_seed`` (e.g. the image's content digest and the
    method) so that exporting the same result twice writes the same series; a
    ``series_key`` makes another series of the same study and frame of reference (e.g.
    "std": the reconstruction's uncertainty map, series number one above the image's).
    MR pixels are scaled by ``peak`` (default: the series' maximum), so a derived map
    written with the image's peak reads in the image's grey levels. ``image_kind`` is a
    fourth ImageType value (e.g. "UNCERTAINTY" for a std map). De-identified
    series replace the study and frame-of-reference UIDs by UIDs derived from them (the
    series of one study stay together) and drop dates and other identifiers.
    """

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

    _quiet_pydicom()

    folder = Path(folder)
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    img = np.abs(image) if np.iscomplexobj(image) else np.asarray(image, dtype=np.float64)
    if modality == "CT":
        pixels = np.clip(np.round(img), -32768, 32767).astype(np.int16)
        sop_class = CTImageStorage
    else:
        peak = peak or float(img.max()) or 1.0
        pixels = np.round(np.clip(img / peak, 0, 1) * 4095).astype(np.uint16)
        sop_class = MRImageStorage
    if window is None:
        lo, hi = np.percentile(pixels, [1, 99.5])
        window = ((lo + hi) / 2, max(hi - lo, 1.0))
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)  # the same flip both ways
    dz, dr, dc = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    col_dir, row_dir = lps[:3, 1] / dr, lps[:3, 2] / dc
    src = deidentified_source(source) if deidentify else dict(source or {})

    def new_uid(*parts: str) -> str:  # derived from the seed, or random without one
        return _uid(uid_seed, *parts) if uid_seed else _uid()

    study_uid = src.get("StudyInstanceUID") or new_uid("study")
    frame_uid = src.get("FrameOfReferenceUID") or new_uid("frame")
    series_uid = new_uid("series", study_uid, *((series_key,) if series_key else ()))
    patient = {"PatientName": src.get("PatientName", ""), "PatientID": src.get("PatientID", "")}
    if deidentify:
        patient = {**DEIDENTIFIED, **patient}
    paths = []
    with atomic_folder(folder) as stage:
        for s in range(pixels.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = new_uid(series_uid, str(s))
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = modality
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.StudyID = "1" if deidentify else str(src.get("StudyID", "1"))[:16]
            ds.SeriesNumber = int(src.get("SeriesNumber", 900)) + (1 if series_key else 0)
            ds.InstanceNumber = s + 1
            for k, v in patient.items():
                setattr(ds, k, v)
            if deidentify:
                ds.PatientIdentityRemoved = "YES"
                ds.DeidentificationMethod = "diffrecon: DICOM basic profile (PS3.15 E.1)"
            if not deidentify:
                for k in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                          "AccessionNumber", "StudyDescription", "ReferringPhysicianName"):
                    if k in src:
                        setattr(ds, k, src[k])
            for k in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                      "ReferringPhysicianName", "PositionReferenceIndicator", "Laterality",
                      "AcquisitionNumber"):
                if k not in ds:
                    setattr(ds, k, "")  # type 2: present, may be empty
            ds.PatientPosition = str(src.get("PatientPosition", "HFS"))
            ds.Manufacturer = "diffrecon"
            if modality == "CT":
                ds.KVP = ""
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
                ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", "", ""
                ds.EchoTrainLength, ds.ImagingFrequency, ds.MagneticFieldStrength = "", "", ""
                ds.EchoNumbers, ds.NumberOfAverages, ds.SliceThickness = "", "", ""
            ds.SeriesDescription = series_description[:64]
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER",
                            *([image_kind] if image_kind else [])]
            ds.DerivationDescription = derivation[:1024]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.ImagePositionPatient = [_ds(v) for v in lps[:3] @ np.array([s, 0, 0, 1.0])]
            ds.PixelSpacing = [_ds(dr), _ds(dc)]
            ds.SliceThickness = _ds(dz)
            ds.SpacingBetweenSlices = _ds(dz)
            ds.Rows, ds.Columns = pixels.shape[1:]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1 if modality == "CT" else 0
            if modality == "CT":
                ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
            ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
            ds.PixelData = np.ascontiguousarray(pixels[s]).tobytes()
            ds.save_as(str(stage / f"{s + 1:04d}.dcm"), enforce_file_format=True)
            paths.append(folder / f"{s + 1:04d}.dcm")
    return paths
