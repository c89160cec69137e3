"""The nightly run: every new scan in an inbox reconstructed into an outbox, with a ledger.

A scan is a file (.h5, .mrd, .dat, .nii, .nii.gz) or a folder (a DICOM series) directly in
the inbox. It is taken once it is complete: a ``NAME.ready`` marker beside it, or no change
of size and modification time for ``settle_seconds``; names ending in .part/.tmp and
hidden names are ignored. Each scan runs as a subflow named after its file stem, writing
into ``OUTBOX/<scan>/``. The ledger (``OUTBOX/ledger.sqlite``) records done, failed (with
its reason; retried on later runs up to ``max_attempts``) and quarantined (bad input,
moved to ``INBOX/quarantine/`` with a ``.reason.txt``; never blocks the batch). A done
scan is not processed again unless its content changes or ``force`` is set.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from diffrecon.common.files import path_digest
from diffrecon.config import ReconConfig
from diffrecon.flows.reconstruct import reconstruct_scans
from diffrecon.io.records import scan_label, scan_name
from diffrecon.results import ResultRecord
from diffrecon.tasks.ledger import Ledger

SCAN_SUFFIXES = (".h5", ".hdf5", ".mrd", ".dat", ".nii", ".nii.gz")
IGNORED_SUFFIXES = (".part", ".tmp", ".ready", ".reason.txt")


def _stamp(p: Path) -> tuple[int, float]:
    files = [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]
    return (sum(q.stat().st_size for q in files),
            max((q.stat().st_mtime for q in files), default=0.0))


def discover(inbox: Path, settle_seconds: float) -> tuple[list[Path], list[Path]]:
    """(complete scans, scans still arriving) in the inbox, sorted by name."""
    ready, waiting = [], []
    now = time.time()
    for p in sorted(inbox.iterdir(), key=lambda q: q.name):
        name = p.name
        if name.startswith(".") or name == "quarantine" or name.endswith(IGNORED_SUFFIXES):
            continue
        if p.is_file() and not name.lower().endswith(SCAN_SUFFIXES):
            continue
        marker = p.with_name(name + ".ready")
        size, mtime = _stamp(p)
        if marker.exists() or (size > 0 and now - mtime >= settle_seconds):
            ready.append(p)
        else:
            waiting.append(p)
    return ready, waiting


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad scan out of the inbox, with its reason beside it."""
    qdir = path.parent / "quarantine"
    qdir.mkdir(exist_ok=True)
    target = qdir / path.name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.move(str(path), str(target))
    (qdir / f"{path.name}.reason.txt").write_text(reason + "\n")
    marker = path.with_name(path.name + ".ready")
    marker.unlink(missing_ok=True)
    return target


@flow(name="process-inbox")
def process_inbox(inbox: str, outbox: str, config: ReconConfig | None = None,
                  force: bool = False, max_attempts: int = 3,
                  settle_seconds: float = 30.0) -> list[dict]:
    """Reconstruct every new, complete scan of ``inbox`` into ``outbox``; see the module."""
    log = get_run_logger()
    config = config or ReconConfig()
    inbox_p, outbox_p = Path(inbox), Path(outbox)
    outbox_p.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(outbox_p / "ledger.sqlite")
    ready, waiting = discover(inbox_p, settle_seconds)
    if waiting:
        log.info("%d scan(s) still arriving, left for the next run", len(waiting))
    summary = []
    for path in ready:
        name = scan_name(path)
        digest = path_digest(path)
        old = ledger.get(name)
        if old is not None and old.digest == digest and not force:
            if old.state == "done" and all(Path(o).exists() for o in old.outputs):
                continue
            if old.state == "failed" and old.attempts >= max_attempts:
                continue
        out_dir = outbox_p / name
        cfg = config.model_copy(update={"out_dir": str(out_dir),
                                        "store": config.store or str(outbox_p / ".artifacts")})
        sub = reconstruct_scans.with_options(flow_run_name=scan_label(path, config.name_by))
        try:
            records: list[ResultRecord] = sub([str(path)], cfg)
        except Exception as exc:  # the subflow itself broke (a lost worker, a full disk)
            entry = ledger.record(name, str(path), digest, "failed", f"{type(exc).__name__}: "
                                                                      f"{exc}")
            summary.append({"scan": name, "state": entry.state, "reason": entry.reason})
            continue
        states = {r.state for r in records}
        reason = "; ".join(sorted({r.error for r in records if r.error})) or None
        outputs = [r.output for r in records if r.output]
        sent = "; ".join(f"{r.method}: {r.sent}" for r in records if r.sent) or None
        if "invalid" in states:
            moved = quarantine(path, reason or "invalid input")
            entry = ledger.record(name, str(moved), digest, "quarantined", reason)
        elif states == {"done"}:
            outputs.append(str(out_dir / "results.json"))
            entry = ledger.record(name, str(path), digest, "done", None, outputs, sent=sent)
        else:  # retried on the next run; what was written (and sent) is recorded
            entry = ledger.record(name, str(path), digest, "failed", reason, outputs, sent=sent)
        log.info("scan %s: %s", name, entry.state)
        summary.append({"scan": name, "state": entry.state, "attempts": entry.attempts,
                        "reason": entry.reason})
    if summary:
        create_table_artifact(table=[{k: ("-" if v is None else str(v)) for k, v in s.items()}
                                     for s in summary],
                              key="inbox-run", description=f"inbox {inbox_p.name}")
    return summary
