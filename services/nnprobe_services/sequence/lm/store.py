"""The job database: one embedded SQLite file (WAL journal, synchronous FULL) holding jobs and their
events. Every write is one transaction, so a crash leaves either the old or the new row, never half."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = (QUEUED, RUNNING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    corpus_id TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    device TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    steps_per_epoch INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    loss REAL NOT NULL DEFAULT 0,
    valid_perplexity REAL NOT NULL DEFAULT 0,
    test_perplexity REAL NOT NULL DEFAULT 0,
    checkpoint_step INTEGER NOT NULL DEFAULT -1,
    checkpoint_sha256 TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    elapsed_seconds REAL NOT NULL DEFAULT 0,
    tokens_per_second REAL NOT NULL DEFAULT 0,
    vocab_size INTEGER NOT NULL DEFAULT 0,
    parameters INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    time REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
"""


@dataclass
class JobRecord:
    """One row of ``jobs``; ``config`` is the TrainingConfig as a dict."""

    job_id: str
    name: str
    corpus_id: str
    state: str
    config: dict[str, Any]
    device: str
    created_at: float
    updated_at: float
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch: int = 0
    loss: float = 0.0
    valid_perplexity: float = 0.0
    test_perplexity: float = 0.0
    checkpoint_step: int = -1
    checkpoint_sha256: str = ""
    error: str = ""
    elapsed_seconds: float = 0.0
    tokens_per_second: float = 0.0
    vocab_size: int = 0
    parameters: int = 0
    last_sequence: int = 0


@dataclass
class EventRecord:
    """One row of ``events``; ``payload`` holds the event's fields."""

    job_id: str
    sequence: int
    kind: str
    time: float
    payload: dict[str, Any]


COLUMNS = [f.name for f in fields(JobRecord)]


class JobStore:
    """Thread-safe access to the database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _job(self, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["config"] = json.loads(values["config"])
        return JobRecord(**values)

    def insert(self, job: JobRecord) -> None:
        values = [json.dumps(job.config) if c == "config" else getattr(job, c) for c in COLUMNS]
        with self._lock:
            self._db.execute(
                f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values
            )

    def update(self, job_id: str, **changes: Any) -> None:
        changes.setdefault("updated_at", time.time())
        unknown = set(changes) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown job columns {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [json.dumps(v) if k == "config" else v for k, v in changes.items()]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*values, job_id])

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, states: Iterable[str] = (), limit: int = 100) -> list[JobRecord]:
        states = list(states)
        where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", [*states, limit]
            ).fetchall()
        return [self._job(row) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        """Number of jobs in each state (states without jobs are absent)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def add_event(self, job_id: str, kind: str, payload: dict[str, Any], **job_changes: Any) -> int:
        """Append an event and apply ``job_changes`` in one transaction; return its sequence number."""
        now = time.time()
        job_changes["updated_at"] = now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = self._db.execute(
                    "SELECT last_sequence FROM jobs WHERE job_id = ?", (job_id,)
                ).fetchone()
                sequence = last + 1
                self._db.execute(
                    "INSERT INTO events (job_id, sequence, kind, time, payload) VALUES (?, ?, ?, ?, ?)",
                    (job_id, sequence, kind, now, json.dumps(payload)),
                )
                job_changes["last_sequence"] = sequence
                assignments = ", ".join(f"{name} = ?" for name in job_changes)
                self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*job_changes.values(), job_id]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return sequence

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
        return [
            EventRecord(r["job_id"], r["sequence"], r["kind"], r["time"], json.loads(r["payload"]))
            for r in rows
        ]

    def truncate_events(self, job_id: str, after: int, **job_changes: Any) -> None:
        """Drop the events after sequence ``after`` (those a resumed run will record again)."""
        job_changes["last_sequence"] = after
        job_changes["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in job_changes)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM events WHERE job_id = ? AND sequence > ?", (job_id, after))
                self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*job_changes.values(), job_id]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
