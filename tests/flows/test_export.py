"""Exports from the flows and from ``diffrecon export``: source attributes carried into the
DICOM series, sends to a real Orthanc recorded in the ledger, HDF5 with the raw header."""

from __future__ import annotations

import os
import time

import h5py
import pydicom
import pytest

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from diffrecon.tasks.ledger import Ledger
from tests.conftest import free_port, make_acquisition

PATIENT = {"patient_name": "Doe^Jane", "patient_id": "PID-4711",
           "study_instance_uid": "1.2.826.0.1.3680043.2.1125.4711"}


@pytest.fixture
def scan_inbox(tmp_path):
    box = tmp_path / "inbox"
    acq = make_acquisition(n_slices=2, n_coils=4, ny=32, nx=32, seed=3)
    acq.metadata.update(PATIENT)
    write_fastmri(acq, box / "dora.h5")
    old = time.time() - 3600
    os.utime(box / "dora.h5", (old, old))
    return box


def test_inbox_sends_to_the_pacs_and_the_ledger_says_so(prefect_harness, orthanc, scan_inbox,
                                                        tmp_path):
    from diffrecon.flows.inbox import process_inbox

    out = tmp_path / "outbox"
    down = f"dicom://ORTHANC@127.0.0.1:{free_port()}"  # a PACS that is not there
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2),
                         outputs=["nifti", "h5", "pacs"], pacs=down)
    (first,) = process_inbox(str(scan_inbox), str(out), config, settle_seconds=60)
    entry = Ledger(out / "ledger.sqlite").get("dora")
    assert first["state"] == "failed" and entry.state == "failed"
    assert entry.reason.startswith(f"PACS send failed (C-STORE to {down} failed after 4 "
                                   "attempts")
    assert entry.sent is None
    series_dir = out / "dora" / "dora_zero-filled_dicom"
    assert f"the series stays on disk at {series_dir}" in entry.reason
    assert len(list(series_dir.glob("*.dcm"))) == 2
    assert (out / "dora" / "dora_zero-filled.nii.gz").exists()
    assert orthanc.series() == []

    # the PACS is back: the next run re-sends (the reconstruction comes from the cache)
    config = config.model_copy(update={"pacs": orthanc.dicom})
    (second,) = process_inbox(str(scan_inbox), str(out), config, settle_seconds=60)
    entry = Ledger(out / "ledger.sqlite").get("dora")
    assert second["state"] == "done" and entry.attempts == 2
    assert entry.sent == f"zero-filled: 2 instances to {orthanc.dicom}"
    (series,) = orthanc.series()
    assert len(series["Instances"]) == 2
    tags = orthanc.tags(series["Instances"][0])
    # study and patient attributes come from the raw file's ISMRMRD header
    assert tags["PatientName"] == "Doe^Jane" and tags["PatientID"] == "PID-4711"
    assert tags["StudyInstanceUID"] == PATIENT["study_instance_uid"]
    assert tags["SeriesDescription"].startswith("zero-filled, R=2")
    with h5py.File(out / "dora" / "dora_zero-filled.h5") as f:
        assert f["reconstruction"].shape == (2, 32, 32)
        assert b"Doe^Jane" in f["ismrmrd_header"][()]  # the raw header, carried over

    # identifiers never reach the server: logs (the failed send was logged), artifacts,
    # run names
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:  # logs and artifacts reach the API asynchronously
            errors = client.read_logs(LogFilter(level=LogFilterLevel(ge_=40)))
            arts = client.read_artifacts()
            if (any("PACS send failed" in e.message for e in errors)
                    and any(a.key == "report-dora" for a in arts)) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        logs = client.read_logs()
        runs = client.read_flow_runs()
        tasks = client.read_task_runs()
    assert any("PACS send failed" in e.message for e in errors)
    assert any(a.key == "report-dora" for a in arts)
    seen = " ".join([e.message for e in logs] + [str(a.data) for a in arts]
                    + [r.name for r in runs + tasks] + [str(r.parameters) for r in runs])
    assert "prepare-dora" in {t.name for t in tasks}  # task runs named by the file stem
    for secret in ("Doe^Jane", "Doe", "PID-4711"):
        assert secret not in seen


def test_export_cli_to_dicom_h5_and_stow_rs(prefect_harness, orthanc, scan_inbox, tmp_path,
                                            capsys):
    from diffrecon.cli import main

    out = tmp_path / "out"
    assert main(["run", str(scan_inbox / "dora.h5"), "--method", "zero-filled", "--accel",
                 "2", "--out", str(out)]) == 0
    nifti = out / "dora_zero-filled.nii.gz"
    # identifiers from the source scan, one replaced on the command line, de-identified h5
    exp = tmp_path / "exp"
    assert main(["export", str(nifti), "--to", "dicom,h5", "--out", str(exp), "--source",
                 str(scan_inbox / "dora.h5"), "--accession", "ACC-1"]) == 0
    ds = pydicom.dcmread(str(exp / "dora_zero-filled_dicom" / "0001.dcm"))
    assert ds.PatientName == "Doe^Jane" and ds.AccessionNumber == "ACC-1"
    assert ds.StudyInstanceUID == PATIENT["study_instance_uid"]
    assert ds.SeriesDescription == "zero-filled, R=2 equispaced"  # from the QA record
    assert ds.Modality == "MR" and list(ds.ImageType)[0] == "DERIVED"
    with h5py.File(exp / "dora_zero-filled.h5") as f:
        assert f["reconstruction"].shape == (2, 32, 32)

    # the output folder to the PACS by STOW-RS, de-identified
    assert main(["export", str(out), "--to", "pacs", "--out", str(tmp_path / "deid"),
                 "--pacs", orthanc.url + "/dicom-web", "--source", str(scan_inbox / "dora.h5"),
                 "--deidentify"]) == 0
    assert "sent 2 instances to http" in capsys.readouterr().out
    (series,) = orthanc.series()
    tags = orthanc.tags(series["Instances"][0])
    assert tags["PatientName"] == "ANONYMOUS" and "PID-4711" not in str(tags)
    assert tags["StudyInstanceUID"] != PATIENT["study_instance_uid"]

    # bad requests: a clear message and a non-zero exit code
    assert main(["export", str(nifti), "--to", "pacs"]) == 1
    assert "--to pacs needs a destination (--pacs)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.nii.gz"), "--to", "dicom"]) == 2
    assert "missing.nii.gz: no such file or folder" in capsys.readouterr().err
