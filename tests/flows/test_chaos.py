"""Chaos on the nightly inbox, bounded (3 kills, a few minutes) and loopback only: runs
killed with SIGKILL at random points while they work, then rerun; two inbox processes at
once; bad entries among good ones. Every scan must be done exactly once, no partial output
visible, no series sent twice (sends counted by the runner, series and instances counted in
the real Orthanc), bad entries quarantined with their reason."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from diffrecon.io.fastmri import write_fastmri
from diffrecon.tasks.ledger import Ledger
from tests.conftest import make_acquisition

# the inbox CLI with every completed PACS send appended to $SEND_LOG
RUNNER = """
import os, sys
import diffrecon.io.pacs as pacs
real = pacs.send
def counted(dest, files, *args, **kwargs):
    out = real(dest, files, *args, **kwargs)
    with open(os.environ["SEND_LOG"], "a") as f:
        f.write(f"{files[0].parent.name} {len(files)}\\n")
    return out
pacs.send = counted
from diffrecon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _scan(path, seed):
    write_fastmri(make_acquisition(n_slices=2, n_coils=4, ny=64, nx=64, seed=seed), path)


def _ledger_rows(out):
    try:
        return {e.name: e for e in Ledger(out / "ledger.sqlite").all()} \
            if (out / "ledger.sqlite").exists() else {}
    except Exception:  # the database is being created
        return {}


def test_killed_runs_and_concurrent_runs_do_every_scan_once(prefect_harness, orthanc, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from diffrecon.io.records import short_hash

    inbox, out, sends = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "sends.log"
    for i, name in enumerate(("anna", "bert", "carl", "eve", "gina", "hugo")):
        _scan(inbox / f"{name}.h5", i)
    _scan(inbox / "eve.hdf5", 9)  # the same stem: a second patient
    (inbox / "gone.h5").symlink_to(tmp_path / "nowhere.h5")
    with h5py.File(inbox / "bomb.h5", "w") as f:  # 256 GiB declared in 2 kB
        f.create_dataset("kspace", shape=(64, 32, 4096, 4096), dtype=np.complex64,
                         chunks=(1, 1, 64, 64))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SEND_LOG": str(sends),
           "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "ERROR"}
    cmd = [sys.executable, "-c", RUNNER, "inbox", str(inbox), "--out", str(out), "--method",
           "zero-filled", "--accel", "2", "--settle", "0", "--outputs", "nifti,dicom,pacs",
           "--pacs", orthanc.dicom, "--max-attempts", "10"]  # the kills are not the scans

    rng, kills, runs = random.Random(20261202), 0, 0
    while kills < 3 and runs < 6:  # kill runs at random moments after they claimed a scan
        runs += 1
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        before = {n: (e.state, e.attempts) for n, e in _ledger_rows(out).items()}
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            now = {n: (e.state, e.attempts) for n, e in _ledger_rows(out).items()}
            if any(s == "running" and now[n] != before.get(n) for n, (s, _) in now.items()):
                break  # a scan was claimed by this run
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2  # the runs were really killed while working
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]

    # two new scans and two inbox processes at once: one works, the other leaves at once
    _scan(inbox / "dora.h5", 21)
    _scan(inbox / "fred.h5", 22)
    pair = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in pair]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 3]), results
    if codes == [0, 3]:
        assert any("is being processed by pid" in err for _, err in results)

    twin = f"eve-{short_hash('eve.hdf5')}"
    good = ["anna", "bert", "carl", "eve", "gina", "hugo", twin, "dora", "fred"]
    rows = _ledger_rows(out)
    assert {n: rows[n].state for n in good} == dict.fromkeys(good, "done")
    assert rows["bomb"].state == "quarantined" and "memory budget" in rows["bomb"].reason
    assert rows["gone"].state == "quarantined" and "dangling" in rows["gone"].reason
    assert {rows[n].attempts for n in ("dora", "fred")} == {1}  # not processed twice
    for name in good:  # every output complete, nothing partial visible
        assert (out / name / f"{name}_zero-filled.nii.gz").exists()
        assert len(list((out / name / f"{name}_zero-filled_dicom").glob("*.dcm"))) == 2
    litter = [str(p.relative_to(out)) for p in out.rglob("*") if ".artifacts" not in p.parts
              and (".tmp" in p.name or ".partial" in p.name or ".old" in p.name)]
    assert litter == []
    # each series sent once (a rerun finds its receipt), and the PACS holds each once
    sent = sends.read_text().split()[::2]
    assert sorted(sent) == sorted(f"{n}_zero-filled_dicom" for n in good)
    series = orthanc.series()
    assert len(series) == len(good) and all(len(s["Instances"]) == 2 for s in series)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_killed_run_leaves_no_prefect_server(tmp_path):
    """Without a configured server, `diffrecon run` starts Prefect's temporary one; killed
    with SIGKILL, it takes the server with it."""
    write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64), tmp_path / "s.h5")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "diffrecon.cli", "run",
                             str(tmp_path / "s.h5"), "--method", "zero-filled", "--out",
                             str(tmp_path / "o")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    server, deadline = None, time.monotonic() + 120
    while server is None and time.monotonic() < deadline and proc.poll() is None:
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "uvicorn"],
                                  capture_output=True, text=True).stdout.split()
        server = int(children[0]) if children else None
        time.sleep(0.1)
    assert server is not None, "the temporary server was not seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(server, signal.SIGKILL)
        pytest.fail("the temporary Prefect server outlived the killed run")
