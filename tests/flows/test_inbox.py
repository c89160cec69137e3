"""The inbox flow and its ledger, against a real (test-harness) Prefect server."""

from __future__ import annotations

import os
import time

import pytest

from diffrecon.config import MaskSpec, ReconConfig
from diffrecon.io.fastmri import write_fastmri
from diffrecon.tasks.ledger import Ledger
from tests.conftest import make_acquisition


@pytest.fixture
def inbox(tmp_path):
    box = tmp_path / "inbox"
    for i, name in enumerate(("anna", "bert")):
        write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=i),
                      box / f"{name}.h5")
    data = (box / "anna.h5").read_bytes()
    (box / "corrupt.h5").write_bytes(data[: len(data) // 3])
    (box / "arriving.h5.part").write_bytes(data[:100])  # an upload in progress
    (box / "notes.txt").write_text("not a scan")
    old = time.time() - 3600
    for p in box.iterdir():
        os.utime(p, (old, old))
    return box


def test_inbox_run_ledger_quarantine_and_no_reprocessing(prefect_harness, inbox, tmp_path,
                                                           monkeypatch):
    from diffrecon.flows.inbox import process_inbox

    out = tmp_path / "outbox"
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2))
    first = process_inbox(str(inbox), str(out), config, settle_seconds=60)
    assert {s["scan"]: s["state"] for s in first} == {
        "anna": "done", "bert": "done", "corrupt": "quarantined"}
    ledger = Ledger(out / "ledger.sqlite")
    rows = {e.name: e for e in ledger.all()}
    assert rows["anna"].attempts == 1 and (out / "anna" / "anna_zero-filled.nii.gz").exists()
    assert (out / "anna" / "results.json").exists()
    assert rows["corrupt"].reason.startswith("corrupt.h5: truncated or corrupt HDF5 file")
    assert not (inbox / "corrupt.h5").exists()
    assert (inbox / "quarantine" / "corrupt.h5").exists()
    assert "truncated" in (inbox / "quarantine" / "corrupt.h5.reason.txt").read_text()

    # a second run processes nothing; a fresh scan that is still being written waits
    write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=9),
                  inbox / "carl.h5")
    assert process_inbox(str(inbox), str(out), config, settle_seconds=60) == []
    (inbox / "carl.h5.ready").write_text("")  # the scanner says it is complete
    second = process_inbox(str(inbox), str(out), config, settle_seconds=60)
    assert [s["scan"] for s in second] == ["carl"]

    # a lost output is made again; force reprocesses a done scan
    (out / "bert" / "bert_zero-filled.nii.gz").unlink()
    assert [s["scan"] for s in process_inbox(str(inbox), str(out), config,
                                             settle_seconds=60)] == ["bert"]
    assert (out / "bert" / "bert_zero-filled.nii.gz").exists()
    forced = process_inbox(str(inbox), str(out), config, force=True, settle_seconds=60)
    assert {s["scan"] for s in forced} == {"anna", "bert", "carl"}


def test_transient_failures_are_retried_up_to_the_limit(prefect_harness, inbox, tmp_path,
                                                         monkeypatch):
    from prefect import task

    from diffrecon.flows.inbox import process_inbox
    from diffrecon.tasks import mri

    (inbox / "corrupt.h5").unlink()
    out = tmp_path / "outbox"
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2))
    real = mri.reconstruct

    @task(name="reconstruct")
    def broken(meas, maps, method, config):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(mri, "reconstruct", broken)
    for attempt in (1, 2):
        runs = process_inbox(str(inbox), str(out), config, max_attempts=2, settle_seconds=60)
        assert {s["state"] for s in runs} == {"failed"}
        assert all(s["attempts"] == attempt for s in runs)
        assert all("worker lost" in s["reason"] for s in runs)
    assert process_inbox(str(inbox), str(out), config, max_attempts=2,
                         settle_seconds=60) == []  # limit reached
    monkeypatch.setattr(mri, "reconstruct", real)
    healed = process_inbox(str(inbox), str(out), config, max_attempts=3, settle_seconds=60)
    assert {s["state"] for s in healed} == {"done"}


def _states(summary):
    return {s["scan"]: s["state"] for s in summary}


def test_same_stem_bad_links_and_dead_claims(prefect_harness, inbox, tmp_path):
    """scan.h5 and scan.hdf5 keep two outputs and two stable rows; a dangling link and a
    link loop are quarantined with their reason while the rest is processed; a claim left
    by a dead run is a failed attempt, and quarantine once it reached max_attempts."""
    from prefect.client.orchestration import get_client

    from diffrecon.flows.inbox import process_inbox
    from diffrecon.io.records import short_hash

    (inbox / "corrupt.h5").unlink()
    (inbox / "bert.hdf5").write_bytes(
        write_fastmri(make_acquisition(n_slices=1, n_coils=6, ny=64, nx=64, seed=5),
                      tmp_path / "bert2.h5").read_bytes())
    (inbox / "gone.h5").symlink_to(tmp_path / "nowhere.h5")
    (inbox / "loop.h5").symlink_to(inbox / "loop.h5")
    (inbox / "empty").mkdir()
    old = time.time() - 3600
    os.utime(inbox / "bert.hdf5", (old, old))
    out = tmp_path / "outbox"
    config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2))
    first = process_inbox(str(inbox), str(out), config, settle_seconds=60)
    twin = f"bert-{short_hash('bert.hdf5')}"
    assert _states(first) == {"anna": "done", "bert": "done", twin: "done",
                              "gone": "quarantined", "loop": "quarantined"}
    reasons = {s["scan"]: s["reason"] for s in first}
    assert reasons["gone"].startswith("dangling symbolic link (its target")
    assert reasons["loop"] == "symbolic link loop"
    assert (inbox / "quarantine" / "gone.h5").is_symlink()
    assert "dangling" in (inbox / "quarantine" / "gone.h5.reason.txt").read_text()
    a = out / "bert" / "bert_zero-filled.nii.gz"
    b = out / twin / f"{twin}_zero-filled.nii.gz"
    assert a.exists() and b.exists() and a.read_bytes() != b.read_bytes()
    rows = {e.name: e for e in Ledger(out / "ledger.sqlite").all()}
    assert rows["bert"].entry == "bert.h5" and rows[twin].entry == "bert.hdf5"
    assert process_inbox(str(inbox), str(out), config, settle_seconds=60) == []

    # the invalid scan's subflow is a failed flow run, its message the reason
    (inbox / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    os.utime(inbox / "bad.h5", (old, old))
    assert _states(process_inbox(str(inbox), str(out), config, settle_seconds=60)) == {
        "bad": "quarantined"}
    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_flow_runs()}
    assert runs["bad"].state_type.value == "FAILED"
    assert "bad zero-filled: invalid" in runs["bad"].state.message

    # a run died while working on anna (its claim is left): a failed attempt, retried
    ledger = Ledger(out / "ledger.sqlite")
    row = ledger.get("anna")
    ledger.record("anna", row.path, "changed", "running", "claimed by pid 1", entry="anna.h5")
    nxt = process_inbox(str(inbox), str(out), config, max_attempts=2, settle_seconds=60)
    assert nxt[0] == {"scan": "anna", "state": "failed", "attempts": 1,
                      "reason": "the run processing it stopped before finishing (killed, out "
                                "of memory or crashed)"}
    assert nxt[1]["scan"] == "anna" and nxt[1]["state"] == "done"  # the retry, same night
    # a run that died after anna's reconstruction finished (results written after the
    # claim) but before the ledger said so: done, not reconstructed again
    row = ledger.get("anna")
    ledger.record("anna", row.path, row.digest, "running", "claimed", entry="anna.h5")
    os.utime(out / "anna" / "results.json")
    assert process_inbox(str(inbox), str(out), config, max_attempts=2, settle_seconds=60) \
        == [{"scan": "anna", "state": "done", "attempts": 2, "reason": None}]
    # ... and once it stopped the worker max_attempts times, it is quarantined
    row = ledger.get("anna")
    ledger.record("anna", row.path, "other", "running", "claimed", entry="anna.h5")
    ledger.record("anna", row.path, "other", "running", "claimed", entry="anna.h5")
    last = process_inbox(str(inbox), str(out), config, max_attempts=2, settle_seconds=60)
    assert _states(last) == {"anna": "quarantined"}
    assert last[0]["reason"].startswith("stopped the worker 2 times while being processed")
    assert (inbox / "quarantine" / "anna.h5").exists() and not (inbox / "anna.h5").exists()


def test_one_run_at_a_time_per_inbox(prefect_harness, inbox, tmp_path):
    """A second run on a held inbox exits at once, naming the holder; a lock left by a dead
    process (flock is released with its holder) is simply taken."""
    import subprocess
    import sys

    from diffrecon.flows.inbox import LOCK_NAME, InboxBusyError, process_inbox

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from diffrecon.flows.inbox import inbox_lock\n"
         f"with inbox_lock(Path({str(inbox)!r})):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = ReconConfig(methods=["zero-filled"], mask=MaskSpec(accel=2))
        with pytest.raises(InboxBusyError, match=rf"is being processed by pid {holder.pid} on "):
            process_inbox(str(inbox), str(tmp_path / "out"), config, settle_seconds=60)
        assert not (tmp_path / "out" / "ledger.sqlite").exists()  # nothing was touched
    finally:
        holder.kill()  # dies holding the lock
        holder.wait()
    assert f"pid {holder.pid}" in (inbox / LOCK_NAME).read_text()
    done = process_inbox(str(inbox), str(tmp_path / "out"), config, settle_seconds=60)
    assert _states(done)["anna"] == "done"


def test_outputs_and_ledger_are_owner_only(prefect_harness, inbox, tmp_path):
    """Every file the inbox writes (images, QA, the ledger, the artifact store, quarantine
    reasons) is 0600 and every folder 0700, unless permissions say otherwise."""
    import stat

    from diffrecon.flows.inbox import process_inbox

    out = tmp_path / "outbox"
    old = os.umask(0o022)
    try:
        process_inbox(str(inbox), str(out), ReconConfig(methods=["zero-filled"],
                                                        mask=MaskSpec(accel=2)),
                      settle_seconds=60)
        # what diffrecon writes (the quarantined scan keeps the scanner's mode, inside a
        # folder only the owner can enter)
        written = [out, *out.rglob("*"), inbox / "quarantine",
                   *(inbox / "quarantine").glob("*.reason.txt")]
        modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in written}
        assert (out / "ledger.sqlite").exists() and (out / ".artifacts").is_dir()
        wrong = {k: oct(m) for k, m in modes.items()
                 if m != (0o700 if (tmp_path / k).is_dir() else 0o600)}
        assert wrong == {}
        group = tmp_path / "group"
        process_inbox(str(inbox), str(group), ReconConfig(methods=["zero-filled"],
                                                          mask=MaskSpec(accel=2),
                                                          permissions="group"),
                      settle_seconds=60)
        assert stat.S_IMODE((group / "anna" / "anna_zero-filled.nii.gz").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_missing_prior_is_found_before_any_work(prefect_harness, inbox, tmp_path, capsys):
    from diffrecon.cli import main

    t0 = time.monotonic()
    assert main(["inbox", str(inbox), "--out", str(tmp_path / "outbox"), "--method", "dds",
                 "--prior", "nosuchprior"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "diffrecon: error: prior nosuchprior: no such folder or shipped prior (shipped: ")
    assert not (tmp_path / "outbox" / "ledger.sqlite").exists()  # no scan claimed
    assert main(["run", str(inbox / "anna.h5"), "--out", str(tmp_path / "o"), "--method",
                 "zero-filled,dds", "--prior", "nosuchprior"]) == 2
    assert capsys.readouterr().err.startswith("diffrecon: error: prior nosuchprior: no such folder")
    assert not (tmp_path / "o").exists()
    assert time.monotonic() - t0 < 60
