"""`diffrecon daemon`: a warm process that runs the commands of shells with DIFFRECON_DAEMON
set, as they would have run them (working folder, DIFFRECON_* variables, output, exit code),
one at a time, interrupted when their client goes away."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from diffrecon.io.fastmri import write_fastmri
from tests.conftest import make_acquisition


def _client(args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "diffrecon.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def daemon(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    sock, log = tmp_path / "run" / "d.sock", tmp_path / "daemon.log"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}
    env.pop("DIFFRECON_DAEMON", None)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "diffrecon.cli", "daemon", "--socket",
                                 str(sock)], env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), log.read_text()[-3000:]
    yield sock, log, proc, {**env, "DIFFRECON_DAEMON": str(sock)}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_daemon_runs_each_clients_command_as_the_client_would(daemon, tmp_path):
    sock, log, proc, env = daemon
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # its user only
    work = tmp_path / "work"
    write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64), work / "s.h5")
    run = ["run", "s.h5", "--method", "zero-filled", "--out", "o1"]  # relative to the client

    r = _client(run, env, work)
    assert r.returncode == 0, r.stderr
    assert "no daemon" not in r.stderr  # it ran there, not in the client
    assert "s     mri       zero-filled" in r.stdout and "results: o1/results.json" in r.stdout
    rows = json.loads((work / "o1" / "results.json").read_text())
    assert [row["state"] for row in rows] == ["done"] and rows[0]["psnr"] > 15
    assert stat.S_IMODE((work / "o1" / "s_zero-filled.nii.gz").stat().st_mode) == 0o600

    # the client's DIFFRECON_* variables apply to its command only
    small = _client(run[:-1] + ["o2"], {**env, "DIFFRECON_MAX_SCAN_GB": "0.00001"}, work)
    assert small.returncode == 1
    assert "more than the memory budget of 0.0 GiB" in small.stdout + small.stderr
    again = _client(run[:-1] + ["o3"], env, work)
    assert again.returncode == 0, again.stderr

    bad = _client(["run", "s.h5", "--method", "nope", "--out", "o4"], env, work)
    assert bad.returncode == 2
    assert "unknown method 'nope' for MRI" in bad.stderr
    assert _client(["methods"], env, work).stdout.count("\n") > 5

    # a client that goes away interrupts its command; the next command runs at once
    write_fastmri(make_acquisition(n_slices=4, n_coils=4, ny=128, nx=128), work / "long.h5")
    long = subprocess.Popen([sys.executable, "-m", "diffrecon.cli", "run", "long.h5",
                             "--method", "dds", "--out", "long"], env=env, cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (work / "long" / ".artifacts").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    long.kill()
    long.wait()
    after = _client(run[:-1] + ["o5"], env, work)
    assert after.returncode == 0, after.stderr
    assert not (work / "long" / "long_dds.nii.gz").exists()
    # and the interrupted scan reconstructs in full afterwards: nothing was left half-done
    # in the daemon (an interrupt in MONAI's first import used to break every later DDS)
    rerun = _client(["run", "long.h5", "--method", "dds", "--out", "long2"], env, work)
    assert rerun.returncode == 0, rerun.stderr
    assert (work / "long2" / "long_dds.nii.gz").exists()

    # what is not a diffrecon request is ignored; the daemon serves on
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(sock))
        raw.sendall(b"not json\n")
        assert raw.recv(1) == b""  # closed without an answer
    assert _client(["methods"], env, work).returncode == 0
    assert "a malformed request was ignored" in log.read_text()
    ends = [ln for ln in log.read_text().splitlines() if "a command ended" in ln]
    assert [e.split("exit code ")[1].split()[0] for e in ends] == \
        ["0", "1", "0", "2", "0", "130", "0", "0", "0"], ends
    assert "(interrupted)" in ends[5]
    assert "s.h5" not in log.read_text()  # no file names (patients) in the daemon's log

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not sock.exists()


def test_without_a_daemon_the_command_runs_here_with_a_warning(prefect_harness, tmp_path,
                                                               monkeypatch, capsys):
    from diffrecon.cli import main

    write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64), tmp_path / "s.h5")
    monkeypatch.setenv("DIFFRECON_DAEMON", str(tmp_path / "none.sock"))
    rc = main(["run", str(tmp_path / "s.h5"), "--method", "zero-filled", "--out",
               str(tmp_path / "o")])
    assert rc == 0
    assert f"no daemon listens at DIFFRECON_DAEMON={tmp_path / 'none.sock'}; running in this " \
           "process" in capsys.readouterr().err
    assert (tmp_path / "o" / "s_zero-filled.nii.gz").exists()


def test_daemon_refuses_a_socket_path_that_holds_a_file(tmp_path, capsys):
    from diffrecon.cli import main

    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["daemon", "--socket", str(tmp_path / "notes.txt")]) == 2
    assert f"--socket {tmp_path / 'notes.txt'}: a file that is not a socket is there" in \
        capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
