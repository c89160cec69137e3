"""deployments/prefect.yaml against a real Prefect server: deploy, run, a worker runs it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from diffrecon.io.fastmri import write_fastmri
from tests.conftest import free_port, make_acquisition, wait_http

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "DIFFRECON_HOME": str(ROOT),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_http(f"http://127.0.0.1:{port}/api/health", 60):
        proc.terminate()
        pytest.fail("the Prefect server did not start")
    yield env
    proc.terminate()
    proc.wait(timeout=30)


def test_deploy_and_a_worker_runs_the_batch_once(server, tmp_path):
    def cli(*args, timeout=180):
        out = subprocess.run([PREFECT, "--no-prompt", *args], env=server, cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    scan = write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64), tmp_path / "s.h5")
    cli("work-pool", "create", "diffrecon-gpu", "--type", "process")
    cli("work-pool", "create", "diffrecon-cpu", "--type", "process")
    listed = cli("deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    for name in ("process-inbox/nightly-inbox", "reconstruct-scans/batch",
                 "train-prior/train-prior", "export-results/export"):
        assert name in listed or name.split("/")[1] in listed
    out_dir = tmp_path / "out"
    cli("deployment", "run", "reconstruct-scans/batch", "--param",
        f"paths={json.dumps([str(scan)])}", "--param",
        f"config={json.dumps({'methods': ['zero-filled'], 'out_dir': str(out_dir)})}")
    cli("worker", "start", "--pool", "diffrecon-gpu", "--run-once")
    (rec,) = json.loads((out_dir / "results.json").read_text())
    assert rec["state"] == "done" and rec["scan"] == "s"
    api = server["PREFECT_API_URL"]
    deps = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    runs = httpx.post(f"{api}/flow_runs/filter", json={}).json()
    batch = [r["state_type"] for r in runs if r["deployment_id"] == deps["batch"]["id"]]
    assert batch == ["COMPLETED"]
    nightly = [deps["nightly-inbox"]]
    (schedule,) = nightly[0]["schedules"]
    assert schedule["schedule"]["cron"] == "0 1 * * *"
    assert schedule["schedule"]["timezone"] == "Europe/London"

    # the export deployment runs on the CPU pool's worker
    cli("deployment", "run", "export-results/export", "--param",
        f"images={json.dumps([rec['output']])}", "--param", 'to=["dicom", "h5"]')
    cli("worker", "start", "--pool", "diffrecon-cpu", "--run-once")
    assert len(list((out_dir / "s_zero-filled_dicom").glob("*.dcm"))) == 1
    assert (out_dir / "s_zero-filled.h5").exists()
    runs = httpx.post(f"{api}/flow_runs/filter", json={}).json()
    assert [r["state_type"] for r in runs if r["deployment_id"] == deps["export"]["id"]] == \
        ["COMPLETED"]


def test_kubernetes_gpu_pool_from_the_template(server):
    """The documented Kubernetes pool: the server accepts the base job template, and its
    job requests and limits nvidia.com/gpu."""
    template = ROOT / "deployments" / "k8s-gpu-job-template.json"
    out = subprocess.run([PREFECT, "--no-prompt", "work-pool", "create", "diffrecon-gpu-k8s",
                          "--type", "kubernetes", "--base-job-template", str(template)],
                         env=server, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    api = server["PREFECT_API_URL"]
    pool = httpx.get(f"{api}/work_pools/diffrecon-gpu-k8s").json()
    assert pool["type"] == "kubernetes"
    container = pool["base_job_template"]["job_configuration"]["job_manifest"]["spec"][
        "template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert pool["base_job_template"]["variables"]["properties"]["gpus"]["default"] == 1
