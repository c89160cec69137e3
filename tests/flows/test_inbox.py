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
