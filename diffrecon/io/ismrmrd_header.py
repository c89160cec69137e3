"""The ISMRMRD XML header, shared by fastMRI HDF5 (`ismrmrd_header`) and ISMRMRD files.

Only the fields diffrecon uses are parsed or written: encoded and recon matrix
size, field of view, the k-space encoding limits, and a few study attributes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from diffrecon.io.records import MRIAcquisition

NS = "http://www.ismrm.org/ISMRMRD"


@dataclass
class HeaderInfo:
    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    frequency_hz: float = 0.0
    study: dict = field(default_factory=dict)


def _find(root: ET.Element, path: str) -> ET.Element | None:
    parts = path.split("/")
    node = root
    for p in parts:
        if node is None:
            return None
        nxt = node.find(f"{{{NS}}}{p}")
        if nxt is None:
            nxt = node.find(p)  # files written without the namespace
        node = nxt
    return node


def _triple(root: ET.Element, path: str, cast: Callable[[float], float]) -> tuple | None:
    node = _find(root, path)
    if node is None:
        return None
    vals = []
    for axis in "xyz":
        child = _find(node, axis)
        if child is None or child.text is None:
            return None
        vals.append(cast(float(child.text)))
    return tuple(vals)


def parse_header(text: str | bytes) -> HeaderInfo:
    """Parse an ISMRMRD XML header. Raises ValueError with the reason if it is unusable."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"ISMRMRD header is not valid XML ({exc})") from None
    enc = _triple(root, "encoding/encodedSpace/matrixSize", int)
    if enc is None:
        raise ValueError("ISMRMRD header has no encoding/encodedSpace/matrixSize")
    rec = _triple(root, "encoding/reconSpace/matrixSize", int) or enc
    efov = _triple(root, "encoding/encodedSpace/fieldOfView_mm", float) or (0.0, 0.0, 0.0)
    rfov = _triple(root, "encoding/reconSpace/fieldOfView_mm", float) or efov
    freq_node = _find(root, "experimentalConditions/H1resonanceFrequency_Hz")
    freq = float(freq_node.text) if freq_node is not None and freq_node.text else 0.0
    study = {}
    for key, path in (
        ("patient_name", "subjectInformation/patientName"),
        ("patient_id", "subjectInformation/patientID"),
        ("study_instance_uid", "studyInformation/studyInstanceUID"),
        ("series_description", "measurementInformation/seriesDescription"),
        ("protocol_name", "measurementInformation/protocolName"),
    ):
        node = _find(root, path)
        if node is not None and node.text:
            study[key] = node.text
    return HeaderInfo(enc, rec, efov, rfov, freq, study)


def acquisition_header(acq: MRIAcquisition) -> str:
    """The ISMRMRD XML header of an MRIAcquisition (as fastMRI and ISMRMRD files get it)."""
    info = HeaderInfo(
        encoded_matrix=tuple(int(v) for v in acq.encoded_matrix),
        recon_matrix=tuple(int(v) for v in acq.recon_matrix),
        encoded_fov_mm=tuple(float(v) for v in acq.fov_mm),
        recon_fov_mm=tuple(float(v) for v in acq.metadata.get("recon_fov_mm", acq.fov_mm)),
        frequency_hz=float(acq.metadata.get("frequency_hz", 0.0)),
        study={k2: v for k2, v in acq.metadata.items() if isinstance(v, str)},
    )
    return build_header(info, acq.kspace.shape[-2])


def build_header(info: HeaderInfo, n_lines: int | None = None) -> str:
    """Write a minimal, schema-valid ISMRMRD XML header for a Cartesian scan."""
    ET.register_namespace("", NS)
    q = lambda tag: f"{{{NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("ismrmrdHeader"))

    def sub(parent: ET.Element, tag: str, text: object = None):
        el = ET.SubElement(parent, q(tag))
        if text is not None:
            el.text = str(text)
        return el

    subj = {k: v for k, v in info.study.items() if k in ("patient_name", "patient_id")}
    if subj:
        s = sub(root, "subjectInformation")
        if "patient_name" in subj:
            sub(s, "patientName", subj["patient_name"])
        if "patient_id" in subj:
            sub(s, "patientID", subj["patient_id"])
    if "study_instance_uid" in info.study:
        sub(sub(root, "studyInformation"), "studyInstanceUID", info.study["study_instance_uid"])
    if "series_description" in info.study or "protocol_name" in info.study:
        m = sub(root, "measurementInformation")
        sub(m, "patientPosition", "HFS")
        if "protocol_name" in info.study:
            sub(m, "protocolName", info.study["protocol_name"])
        if "series_description" in info.study:
            sub(m, "seriesDescription", info.study["series_description"])
    sub(sub(root, "experimentalConditions"), "H1resonanceFrequency_Hz", int(info.frequency_hz))
    enc = sub(root, "encoding")
    for space, matrix, fov in (
        ("encodedSpace", info.encoded_matrix, info.encoded_fov_mm),
        ("reconSpace", info.recon_matrix, info.recon_fov_mm),
    ):
        sp = sub(enc, space)
        ms = sub(sp, "matrixSize")
        for axis, v in zip("xyz", matrix):
            sub(ms, axis, int(v))
        fv = sub(sp, "fieldOfView_mm")
        for axis, v in zip("xyz", fov):
            sub(fv, axis, repr(float(v)))
    lim = sub(enc, "encodingLimits")
    ny = n_lines if n_lines is not None else info.encoded_matrix[1]
    steps = (("kspace_encoding_step_1", ny), ("kspace_encoding_step_2", info.encoded_matrix[2]))
    for tag, n in steps:
        e = sub(lim, tag)
        sub(e, "minimum", 0)
        sub(e, "maximum", max(0, int(n) - 1))
        sub(e, "center", int(n) // 2)
    sub(enc, "trajectory", "cartesian")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def strip_identifiers(text: str) -> str:
    """The header without its subject and study information (for de-identified exports)."""
    ET.register_namespace("", NS)
    root = ET.fromstring(text)
    for tag in ("subjectInformation", "studyInformation"):
        for el in root.findall(f"{{{NS}}}{tag}"):
            root.remove(el)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def acquisition_from_header(path: str | Path, kspace: np.ndarray, mask: np.ndarray,
                            info: HeaderInfo, metadata: dict | None = None,
                            reference: np.ndarray | None = None,
                            reference_kind: str | None = None) -> MRIAcquisition:
    """An MRIAcquisition of a file with its header's matrix, FOV, study attributes and
    frequency (``metadata`` adds to them)."""
    from diffrecon.io.records import MRIAcquisition, scan_name

    return MRIAcquisition(
        name=scan_name(path), kspace=kspace, mask=mask, encoded_matrix=info.encoded_matrix,
        recon_matrix=info.recon_matrix, fov_mm=info.encoded_fov_mm, reference=reference,
        reference_kind=reference_kind, source=str(path),
        metadata={**info.study, **(metadata or {}), "frequency_hz": info.frequency_hz,
                  "recon_fov_mm": info.recon_fov_mm})
