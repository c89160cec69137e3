"""Nothing identifying and no password leaves a --deidentify run: output folder (artifact
store included), console, Prefect logs, runs, parameters and artifacts; PACS destinations
are checked before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from diffrecon.io.fastmri import write_fastmri
from tests.conftest import make_acquisition

PATIENT = {"patient_name": "Doe^Jane", "patient_id": "PID-4711",
           "study_instance_uid": "1.2.826.0.1.3680043.2.1125.4711"}


@pytest.fixture
def dora(tmp_path):
    acq = make_acquisition(n_slices=2, n_coils=4, ny=64, nx=64, seed=3)
    acq.metadata.update(PATIENT)
    return write_fastmri(acq, tmp_path / "in" / "dora.h5")


@pytest.mark.parametrize(("dest", "problem"), [
    ("dicom://A@127.0.0.1:99999", "dicom://A@127.0.0.1:99999: the port is not a number from 1 "
                                  "to 65535"),
    ("http://", "http://: no host; expected http(s)://host:port/dicom-web or "
                "dicom://AE_TITLE@host:port"),
    ("pacs.example.org:104", "pacs.example.org:104: expected http(s)://host:port/dicom-web or "
                             "dicom://AE_TITLE@host:port"),
])
def test_bad_destinations_are_refused_before_any_work(dora, tmp_path, capsys, dest, problem):
    from diffrecon.cli import main

    out = tmp_path / "out"
    assert main(["run", str(dora), "--method", "zero-filled", "--out", str(out),
                 "--outputs", "nifti,pacs", "--pacs", dest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"diffrecon: error: PACS destination {problem}"]
    assert not out.exists()


def test_urls_lose_their_credentials():
    from diffrecon.io.pacs import parse_destination, redact, split_credentials

    url = "https://u%40x:p%3Aw@pacs.example.org:443/dicom-web"
    assert split_credentials(url) == ("https://pacs.example.org:443/dicom-web", ("u@x", "p:w"))
    assert redact(f"failed: {url} and http://a:b@h/x, dicom://ME:PACS@h:104") == \
        "failed: https://***@pacs.example.org:443/dicom-web and http://***@h/x, " \
        "dicom://ME:PACS@h:104"
    with pytest.raises(ValueError) as err:
        parse_destination("http://alice:topsecret@h:8042/dicom-web")
    assert "topsecret" not in str(err.value) and "DIFFRECON_PACS_PASSWORD" in str(err.value)


def test_a_deidentified_run_leaks_no_identifier_and_no_password(prefect_harness,
                                                                  orthanc_login, dora,
                                                                  tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    user, password = orthanc_login.login
    host = orthanc_login.url.removeprefix("http://")
    out = tmp_path / "out"
    since = datetime.now(UTC)  # the Prefect objects of this run only (the server is shared)
    # the CLI as a user runs it, in its own process with its own logging defaults (INFO to
    # the server, warnings on the console), against the test server
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    console = subprocess.run(
        [sys.executable, "-m", "diffrecon.cli", "run", str(dora), "--method",
         "zero-filled,cg-sense", "--accel", "2", "--out", str(out), "--deidentify",
         "--outputs", "nifti,dicom,h5,png,pacs", "--pacs",
         f"http://{user}:{password}@{host}/dicom-web"],
        env=env, capture_output=True, text=True, timeout=600)
    assert console.returncode == 0, console.stderr[-3000:]
    console.out, console.err = console.stdout, console.stderr
    assert f"http://***@{host}/dicom-web moved out of the URL" in console.err
    assert f"--pacs http://{host}/dicom-web is plain http" in console.err
    series = orthanc_login.series()  # sent with the password from the environment
    assert len(series) == 2
    tags = orthanc_login.tags(series[0]["Instances"][0])
    assert tags["PatientName"] == "ANONYMOUS"

    secrets = [PATIENT["patient_name"], PATIENT["patient_id"], PATIENT["study_instance_uid"],
               password]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(".artifacts" in p.parts for p in files)  # the store is searched too
    assert any(p.name.startswith("prepare-") for p in files)  # the load task's result
    for f in files:
        data = f.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} in {f.relative_to(out)}"
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
                if r.created >= since]
        ids = [r.id for r in runs]
        while True:  # logs and artifacts reach the API asynchronously
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
            if any(a.key == "report-dora" for a in arts) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        seen = [console.out, console.err]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        assert any(e.level == 20 and e.message.startswith("loaded dora: ") for e in logs)
        seen += [e.message for e in logs]
        seen += [f"{a.key} {a.description} {a.data}" for a in arts]
        for r in runs:
            seen += [r.name, str(r.parameters), str(r.state.message)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=ids)))
        assert len(tasks) >= 5
        seen += [f"{t.name} {t.state.message} {t.task_inputs}" for t in tasks]
        seen += [str(v) for v in client.read_variables()]
    text = "\n".join(seen)
    assert "report-dora" in text
    for secret in secrets:
        assert secret not in text


def test_the_login_comes_from_a_secret_block_or_is_refused_clearly(prefect_harness,
                                                                    orthanc_login, tmp_path,
                                                                    monkeypatch):
    import numpy as np
    from prefect.blocks.system import Secret

    from diffrecon.io.dicom import write_dicom_series
    from diffrecon.io.pacs import PASSWORD_ENV, USER_ENV, PacsError, send
    from diffrecon.tasks.export import pacs_credentials

    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    files = write_dicom_series(tmp_path / "s", np.zeros((2, 8, 8), np.float32), np.eye(4),
                               "CT", "x", uid_seed="secret-test")
    dest = orthanc_login.url + "/dicom-web"
    with pytest.raises(PacsError, match=r"refused the credentials \(HTTP 401\); set "
                                        "DIFFRECON_PACS_USER"):
        send(dest, files, retries=0)
    Secret(value=":".join(orthanc_login.login)).save("pacs-login", overwrite=True)
    assert pacs_credentials("pacs-login") == orthanc_login.login
    assert send(dest, files, auth=pacs_credentials("pacs-login"))["instances"] == 2
    (series,) = orthanc_login.series()
    assert len(series["Instances"]) == 2
    monkeypatch.setenv(USER_ENV, "pacs-user")
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    assert pacs_credentials(None) == ("pacs-user", "wrong")
