"""The ledger of an outbox: every scan the inbox flow has seen, with its state.

SQLite (one file, ``OUTBOX/ledger.sqlite``) rather than JSON lines: updates are atomic
transactions, several workers on a shared outbox serialise on the database lock instead
of interleaving appends, and a physicist can query it with any SQLite tool. A row per
scan: name (its label: outputs go to ``OUTBOX/<name>/``), entry (the inbox entry's file
name, the scan's identity: ``scan.h5`` and ``scan.hdf5`` are two rows with two names), path,
content digest, state (running | done | failed | quarantined), attempts, reason, outputs
(JSON list), sent (the PACS sends, e.g. "cg-sense: 5 instances to dicom://..."), updated
(UTC ISO time). A scan is claimed (state running, one more attempt) before any work, so a
run that dies leaves a row saying so.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    updated TEXT NOT NULL,
    sent TEXT,
    entry TEXT
)
"""
COLUMNS = "name, path, digest, state, attempts, reason, outputs, updated, sent, entry"


@dataclass
class Entry:
    name: str
    path: str
    digest: str
    state: str
    attempts: int
    reason: str | None
    outputs: list[str]
    updated: str
    sent: str | None = None
    entry: str | None = None


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(scans)")}
            for column in ("sent", "entry"):  # a ledger written before these were kept
                if column not in have:
                    db.execute(f"ALTER TABLE scans ADD COLUMN {column} TEXT")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def get(self, name: str) -> Entry | None:
        with self._db() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM scans WHERE name = ?",
                             (name,)).fetchone()
        return None if row is None else _entry(row)

    def by_entry(self, entry: str) -> Entry | None:
        """The row of an inbox entry (by file name)."""
        with self._db() as db:
            row = db.execute(f"SELECT {COLUMNS} FROM scans WHERE entry = ?",
                             (entry,)).fetchone()
        return None if row is None else _entry(row)

    def all(self) -> list[Entry]:
        with self._db() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM scans ORDER BY name").fetchall()
        return [_entry(r) for r in rows]

    def record(self, name: str, path: str, digest: str, state: str, reason: str | None = None,
               outputs: list[str] | None = None, attempt: bool = True,
               sent: str | None = None, entry: str | None = None) -> Entry:
        """Write a scan's new state; ``attempt`` counts one more processing attempt (reset
        when the content digest changes)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        old = self.get(name)
        attempts = 0 if old is None or old.digest != digest else old.attempts
        attempts += 1 if attempt else 0
        with self._db() as db:
            db.execute(
                f"INSERT INTO scans ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET "
                "path = excluded.path, digest = excluded.digest, state = excluded.state, "
                "attempts = excluded.attempts, reason = excluded.reason, "
                "outputs = excluded.outputs, updated = excluded.updated, sent = excluded.sent, "
                "entry = COALESCE(excluded.entry, scans.entry)",
                (name, path, digest, state, attempts, reason, json.dumps(outputs or []), now,
                 sent, entry))
        return self.get(name)


def _entry(row: tuple) -> Entry:
    return Entry(*row[:6], json.loads(row[6]), row[7], row[8], row[9])
