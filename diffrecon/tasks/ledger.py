"""The ledger of an outbox: every scan the inbox flow has seen, with its state.

SQLite (one file, ``OUTBOX/ledger.sqlite``) rather than JSON lines: updates are atomic
transactions, several workers on a shared outbox serialise on the database lock instead
of interleaving appends, and a physicist can query it with any SQLite tool. A row per
scan: name, path, content digest, state (done | failed | quarantined), attempts, reason,
outputs (JSON list), updated (UTC ISO time).
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
    updated TEXT NOT NULL
)
"""


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


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def get(self, name: str) -> Entry | None:
        with self._db() as db:
            row = db.execute("SELECT name, path, digest, state, attempts, reason, outputs, "
                             "updated FROM scans WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Entry(*row[:6], json.loads(row[6]), row[7])

    def all(self) -> list[Entry]:
        with self._db() as db:
            rows = db.execute("SELECT name, path, digest, state, attempts, reason, outputs, "
                              "updated FROM scans ORDER BY name").fetchall()
        return [Entry(*r[:6], json.loads(r[6]), r[7]) for r in rows]

    def record(self, name: str, path: str, digest: str, state: str, reason: str | None = None,
               outputs: list[str] | None = None, attempt: bool = True) -> Entry:
        """Write a scan's new state; ``attempt`` counts one more processing attempt (reset
        when the content digest changes)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        old = self.get(name)
        attempts = 0 if old is None or old.digest != digest else old.attempts
        attempts += 1 if attempt else 0
        with self._db() as db:
            db.execute(
                "INSERT INTO scans (name, path, digest, state, attempts, reason, outputs, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "path = excluded.path, digest = excluded.digest, state = excluded.state, "
                "attempts = excluded.attempts, reason = excluded.reason, "
                "outputs = excluded.outputs, updated = excluded.updated",
                (name, path, digest, state, attempts, reason, json.dumps(outputs or []), now))
        return self.get(name)
