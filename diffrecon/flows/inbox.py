"""The nightly run: every new scan in an inbox reconstructed into an outbox, with a ledger.

A scan is a file (.h5, .hdf5, .mrd, .dat, .nii, .nii.gz) or a folder (a DICOM series)
directly in the inbox. It is taken once it is complete: a ``NAME.ready`` marker beside it,
or no change of size and modification time for ``settle_seconds``; names ending in
.part/.tmp and hidden names are ignored. An entry that cannot be read (a dangling symbolic
link, a link loop, no permission) is quarantined with its reason and the night goes on.

Identity: a scan is its inbox entry (the file name); its label (outputs in
``OUTBOX/<label>/``, the subflow's name, the ledger's ``name``) is the file stem, or the
stem with a short hash of the entry name when another entry already has that stem
(``scan.h5`` and ``scan.hdf5``), kept in the ledger so it never changes.

Hospital safety: one run at a time per inbox (a lock file, ``INBOX/.diffrecon-inbox.lock``,
held with ``flock`` so a dead holder's lock is free again, naming its holder); a scan is
claimed in the ledger (state running, one more attempt) before any work, so a run that
dies (killed, out of memory, a segfault) leaves a row that the next run counts as a failed
attempt, and a scan that stopped the worker ``max_attempts`` times is quarantined instead
of blocking every night. The ledger (``OUTBOX/ledger.sqlite``) records done, failed (with
its reason; retried up to ``max_attempts``) and quarantined (bad input, moved to
``INBOX/quarantine/`` with a ``.reason.txt``). A done scan is not processed again unless
its content changes or ``force`` is set.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from diffrecon.common.files import apply_permissions, path_digest
from diffrecon.config import ReconConfig
from diffrecon.flows.reconstruct import check_priors, reconstruct_scans
from diffrecon.io.records import scan_label, unique_label
from diffrecon.results import ResultRecord
from diffrecon.tasks.ledger import Entry, Ledger

SCAN_SUFFIXES = (".h5", ".hdf5", ".mrd", ".dat", ".nii", ".nii.gz")
IGNORED_SUFFIXES = (".part", ".tmp", ".ready", ".reason.txt")
LOCK_NAME = ".diffrecon-inbox.lock"


class InboxBusyError(RuntimeError):
    """Another run holds the inbox."""


@contextmanager
def inbox_lock(inbox: Path) -> Iterator[None]:
    """Hold the inbox for this process: an exclusive ``flock`` on ``INBOX/.diffrecon-inbox.lock``
    (released by the kernel when the holder dies, so a stale lock is simply free), with the
    holder (pid, host, start time) written in it. A second run raises InboxBusyError naming
    the holder."""
    path = inbox / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another run"
            raise InboxBusyError(f"inbox {inbox} is being processed by {holder}; this run "
                                 "exits without touching it") from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(),
                  0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _stamp(p: Path) -> tuple[int, float]:
    files = [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]
    return (sum(q.stat().st_size for q in files),
            max((q.stat().st_mtime for q in files), default=0.0))


def _unreadable(p: Path) -> str | None:
    """Why an inbox entry cannot be used as it stands (None when it can)."""
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if p.is_symlink():
            return f"dangling symbolic link (its target {os.readlink(p)!r} does not exist)"
        return f"cannot be read ({exc.strerror})"
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        return "cannot be read (permission denied)"
    return None


def discover(inbox: Path, settle_seconds: float
             ) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """(complete scans, scans still arriving, unusable entries with the reason), each sorted
    by name. No entry can stop the others: whatever fails while looking at one makes it
    unusable."""
    ready, waiting, bad = [], [], []
    now = time.time()
    for p in sorted(inbox.iterdir(), key=lambda q: q.name):
        name = p.name
        if name.startswith(".") or name == "quarantine" or name.endswith(IGNORED_SUFFIXES):
            continue
        if not p.is_dir() and not name.lower().endswith(SCAN_SUFFIXES) and not p.is_symlink():
            continue
        problem = _unreadable(p)
        if problem is None and not p.is_dir() and not name.lower().endswith(SCAN_SUFFIXES):
            continue  # a link to something that is not a scan
        if problem is not None:
            bad.append((p, problem))
            continue
        try:
            marker = p.with_name(name + ".ready")
            size, mtime = _stamp(p)
        except OSError as exc:
            bad.append((p, f"cannot be read ({exc.strerror or exc})"))
            continue
        if marker.exists() or (size > 0 and now - mtime >= settle_seconds):
            ready.append(p)
        else:
            waiting.append(p)
    return ready, waiting, bad


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad scan (or a bad link: the link itself) out of the inbox, with its reason
    beside it."""
    qdir = path.parent / "quarantine"
    qdir.mkdir(exist_ok=True)
    target = qdir / path.name
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    os.rename(path, target) if path.is_symlink() else shutil.move(str(path), str(target))
    (qdir / f"{path.name}.reason.txt").write_text(reason + "\n")
    marker = path.with_name(path.name + ".ready")
    marker.unlink(missing_ok=True)
    return target


def _label(path: Path, ledger: Ledger, taken: set[str], mode: str) -> tuple[str, Entry | None]:
    """(label, ledger row) of an inbox entry: the label it was given before, else its stem
    label, or that with the hash of the entry name when another scan has it."""
    row = ledger.by_entry(path.name)
    if row is None:  # a ledger from before entries were kept: rows were named by the stem
        old = ledger.get(scan_label(path, mode))
        if old is not None and old.entry is None and Path(old.path).name == path.name:
            row = old
    if row is not None:
        return row.name, row
    return unique_label(scan_label(path, mode), path.name, taken), None


def _summary(entry: Entry) -> dict:
    """A ledger row as the run's summary shows it."""
    return {"scan": entry.name, "state": entry.state, "attempts": entry.attempts,
            "reason": entry.reason}


def _written(records: list[ResultRecord]) -> tuple[list[str], str | None]:
    """(the outputs the records name, their PACS sends as the ledger's ``sent`` line)."""
    outputs = [r.output for r in records if r.output]
    sent = "; ".join(f"{r.method}: {r.sent}" for r in records if r.sent) or None
    return outputs, sent


def _finished_before_death(row: Entry, path: Path, outbox: Path
                           ) -> tuple[list[str], str | None] | None:
    """The outputs of a claimed scan whose reconstruction finished (its results.json written
    after the claim, every record done, every output there, the content still the one
    claimed) although the run died before the ledger said so, and its PACS sends; None
    otherwise."""
    from datetime import datetime

    from diffrecon.results import read_results

    results = outbox / row.name / "results.json"
    try:
        claimed = datetime.fromisoformat(row.updated).timestamp()
        if not results.exists() or results.stat().st_mtime < claimed - 1:
            return None
        records = read_results(results)
        outputs, sent = _written(records)
        if not records or any(r.state != "done" for r in records) \
                or not all(Path(o).exists() for o in outputs):
            return None
        if path_digest(path) != row.digest:
            return None
    except (OSError, ValueError):
        return None
    return [*outputs, str(results)], sent


def _dead_claims(ledger: Ledger, inbox: Path, outbox: Path, max_attempts: int) -> list[dict]:
    """Rows left in state running by a run that died (this run holds the lock, so no one
    else is working): done when its reconstruction had finished, else a failed attempt, or
    quarantine after ``max_attempts``."""
    out = []
    for row in ledger.all():
        if row.state != "running":
            continue
        path = inbox / (row.entry or Path(row.path).name)
        finished = _finished_before_death(row, path, outbox)
        if finished is not None:  # not done again: the run died just after the work
            ledger.record(row.name, row.path, row.digest, "done", None, finished[0],
                          attempt=False, sent=finished[1])
        elif row.attempts >= max_attempts and (path.exists() or path.is_symlink()):
            reason = (f"stopped the worker {row.attempts} times while being processed "
                      "(killed, out of memory or crashed); quarantined so it no longer "
                      "blocks the inbox")
            moved = quarantine(path, reason)
            ledger.record(row.name, str(moved), row.digest, "quarantined", reason,
                          attempt=False)
        else:
            reason = "the run processing it stopped before finishing (killed, out of " \
                     "memory or crashed)"
            ledger.record(row.name, row.path, row.digest, "failed", reason, row.outputs,
                          attempt=False, sent=row.sent)
        entry = ledger.get(row.name)
        out.append(_summary(entry))
    return out


@flow(name="process-inbox")
def process_inbox(inbox: str, outbox: str, config: ReconConfig | None = None,
                  force: bool = False, max_attempts: int = 3,
                  settle_seconds: float = 30.0) -> list[dict]:
    """Reconstruct every new, complete scan of ``inbox`` into ``outbox``; see the module.
    Raises InboxBusyError when another run holds the inbox."""
    inbox_p = Path(inbox)
    config = config or ReconConfig()
    apply_permissions(config.permissions)  # the ledger, quarantine reasons, outputs
    with inbox_lock(inbox_p):
        return _process_inbox(inbox_p, Path(outbox), config, force,
                              max_attempts, settle_seconds)


def _process_inbox(inbox_p: Path, outbox_p: Path, config: ReconConfig, force: bool,
                   max_attempts: int, settle_seconds: float) -> list[dict]:
    log = get_run_logger()
    check_priors(config)  # before any scan is claimed
    outbox_p.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(outbox_p / "ledger.sqlite")
    summary = _dead_claims(ledger, inbox_p, outbox_p, max_attempts)
    ready, waiting, bad = discover(inbox_p, settle_seconds)
    taken = {row.name for row in ledger.all()}
    for path, problem in bad:
        label, row = _label(path, ledger, taken, config.name_by)
        taken.add(label)
        moved = quarantine(path, f"{path.name}: {problem}")
        entry = ledger.record(label, str(moved), "-", "quarantined", problem, entry=path.name)
        log.warning("inbox entry %s quarantined: %s", label, problem)
        summary.append(_summary(entry))
    for path in waiting:
        if path.is_dir() and not any(path.iterdir()):
            log.warning("inbox folder %s is empty; left for a later run",
                        scan_label(path, config.name_by))
    if waiting:
        log.info("%d scan(s) still arriving, left for the next run", len(waiting))
    # no heartbeat thread for the per-scan subflows (this run keeps its own): a subflow's
    # exit waits up to 1 s for that thread's sleep, the largest cost of a small scan; the
    # setting entered once for the night, not per scan (0.1-0.2 s each)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for path in ready:
            label, old = _label(path, ledger, taken, config.name_by)
            taken.add(label)
            digest = path_digest(path)
            if old is not None and old.digest == digest and not force:
                if old.state == "done" and all(Path(o).exists() for o in old.outputs):
                    continue
                if old.state == "failed" and old.attempts >= max_attempts:
                    continue
            # the claim: recorded (and the attempt counted) before any work
            ledger.record(label, str(path), digest, "running",
                          f"claimed by pid {os.getpid()} on {socket.gethostname()}",
                          attempt=True, entry=path.name)
            summary.append(_process_one(path, label, digest, config, outbox_p, ledger))
            log.info("scan %s: %s", label, summary[-1]["state"])
    if summary:
        create_table_artifact(table=[{k: ("-" if v is None else str(v)) for k, v in s.items()}
                                     for s in summary],
                              key="inbox-run", description=f"inbox {inbox_p.name}")
    return summary


def _label_run_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.parameters["names"][0]


@functools.cache
def _scan_subflow() -> Flow:
    """``reconstruct_scans`` named after its one scan's label (made once: ``with_options``
    rebuilds the parameter schema, 0.07 s, per call)."""
    return reconstruct_scans.with_options(flow_run_name=_label_run_name)


def _process_one(path: Path, label: str, digest: str, config: ReconConfig, outbox_p: Path,
                 ledger: Ledger) -> dict:
    """One claimed scan as a subflow (a failed or invalid scan is a failed flow run); its
    ledger row after it."""
    out_dir = outbox_p / label
    cfg = config.model_copy(update={"out_dir": str(out_dir),
                                    "store": config.store or str(outbox_p / ".artifacts")})
    state = _scan_subflow()([str(path)], cfg, [label], fail_run=True, results_table=False,
                            return_state=True)
    records = state.result(raise_on_failure=False)
    if not isinstance(records, list):  # the subflow itself broke (a lost worker, a full disk)
        reason = f"{type(records).__name__}: {records}" if isinstance(records, BaseException) \
            else (state.message or "the reconstruction flow did not finish")
        entry = ledger.record(label, str(path), digest, "failed", reason, attempt=False)
        return _summary(entry)
    records: list[ResultRecord]
    states = {r.state for r in records}
    reason = "; ".join(sorted({r.error for r in records if r.error})) or None
    outputs, sent = _written(records)
    if "invalid" in states:
        moved = quarantine(path, reason or "invalid input")
        entry = ledger.record(label, str(moved), digest, "quarantined", reason, attempt=False)
    elif states == {"done"}:
        outputs.append(str(out_dir / "results.json"))
        entry = ledger.record(label, str(path), digest, "done", None, outputs, attempt=False,
                              sent=sent)
    else:  # retried on the next run; what was written (and sent) is recorded
        entry = ledger.record(label, str(path), digest, "failed", reason, outputs,
                              attempt=False, sent=sent)
    return _summary(entry)
