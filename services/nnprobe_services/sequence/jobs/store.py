"""The job database: jobs, their events, and the queue that replicas share, on SQLite (the embedded
default: one file, WAL journal, synchronous FULL) or PostgreSQL, through one SQLAlchemy 2 Core code path.

Every write is one transaction, so a crash leaves either the old or the new row, never half. Replicas
claim queued jobs with row locks (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite:
``BEGIN IMMEDIATE``, one writer at a time) and hold a running job by a lease that their heartbeat renews;
a job whose lease expired is claimable again (takeover). Each claim increments ``attempt``, the fencing
token of the owner's later writes: a replica that lost its lease cannot write to the job any more. Lease
times are read from the database's clock, so the replicas' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from nnprobe_services.errors import ResourceExhausted, Unavailable
from nnprobe_services.sequence.jobs.queue import SharedQueue, supersede_replayed
from nnprobe_services.sequence.jobs.records import (
    ACTIVE,
    CANCELLED,
    COLUMNS,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Claim,
    EventRecord,
    JobRecord,
    LeaseLost,
)
from nnprobe_services.sequence.jobs.schema import events as events_table
from nnprobe_services.sequence.jobs.schema import jobs as jobs_table
from nnprobe_services.sequence.jobs.schema import migrate

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "FAILED",
    "INTERRUPTED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "Claim",
    "EventRecord",
    "JobRecord",
    "JobStore",
    "LeaseLost",
]


def database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs use psycopg 3; others are returned unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return sa.make_url(url).render_as_string(hide_password=True)


def _write_ahead_log(dbapi_connection: Any, wait_seconds: float = 60.0) -> None:
    """Put the database in WAL mode (a property of the file: once is enough). Switching needs the file to
    itself, and SQLite answers "database is locked" at once, without its busy handler, while another
    process (a replica starting at the same moment) holds it: retry within ``wait_seconds``."""
    give_up = time.monotonic() + wait_seconds
    while True:
        try:
            (mode,) = dbapi_connection.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > give_up:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        for pragma in ("busy_timeout=60000", "synchronous=FULL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")
        _write_ahead_log(dbapi_connection)

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class JobStore(SharedQueue):
    """Thread-safe, process-safe access to the job database at ``url``.

    ``url``: ``sqlite:///<path>`` or ``postgresql://user:password@host:port/db``. The schema is migrated
    on construction (see ``schema.migrate``). Database outages raise ``Unavailable``."""

    def __init__(self, url: str) -> None:
        self.url = database_url(url)
        parsed = sa.make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(self.url)
            self._clock: Any = (sa.func.julianday("now") - 2440587.5) * 86400.0
        elif parsed.get_backend_name() == "postgresql":
            self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=8)
            self._clock = sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float(precision=53))
        else:
            raise ValueError(f"database_url must be sqlite:///... or postgresql://..., not {redacted(url)}")
        self.backend = parsed.get_backend_name()
        with self._translate():
            self.schema_versions = migrate(self.engine, time.time)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.OperationalError as error:
            raise Unavailable(f"the job database is unreachable: {error.orig}") from error

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as conn:
            conn.execution_options(immediate=True)
            with conn.begin():
                yield conn

    def now(self) -> float:
        """The database's clock, in Unix seconds (the clock leases are measured on)."""
        with self._read() as conn:
            return float(conn.execute(sa.select(self._clock)).scalar_one())

    # -- rows ----------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: Any) -> JobRecord:
        values = dict(row._mapping)
        values["config"] = json.loads(values["config"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return JobRecord(**values)

    @staticmethod
    def _values(changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown job columns {sorted(unknown)}")
        return {k: json.dumps(v) if k == "config" else v for k, v in changes.items()}

    def insert(self, job: JobRecord, max_queued: int | None = None) -> tuple[JobRecord, bool]:
        """Add ``job`` and return it with True; with ``max_queued``, raise ``ResourceExhausted`` when that
        many jobs are already queued (over all replicas and devices; counted and inserted in one serialized
        transaction).

        When ``job.request_id`` is set and a job already holds that key, nothing is added: that job is
        returned with False, whatever the queue holds (the caller compares ``request_digest``). Inserts
        are serialized, and the unique index on ``request_id`` backs that up: a concurrent insert of the
        same key that loses reads the winner's job."""
        values = self._values({c: getattr(job, c) for c in COLUMNS})
        try:
            with self._write() as conn:
                if self.backend == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6A6F6273)))
                if job.request_id:
                    held = conn.execute(
                        sa.select(jobs_table).where(jobs_table.c.request_id == job.request_id)
                    ).first()
                    if held is not None:
                        return self._job(held), False
                if max_queued is not None:
                    queued = conn.execute(
                        sa.select(sa.func.count()).where(jobs_table.c.state == QUEUED)
                    ).scalar_one()
                    if queued >= max_queued:
                        raise ResourceExhausted(
                            f"{queued} jobs are already queued; the limit is {max_queued} (max_queued_jobs)",
                            field="corpus_id",
                        )
                conn.execute(jobs_table.insert().values(**values))
        except sa.exc.IntegrityError:
            winner = self.by_request_id(job.request_id) if job.request_id else None
            if winner is None:
                raise
            return winner, False
        return job, True

    def by_request_id(self, request_id: str) -> JobRecord | None:
        """The job StartTraining created under the idempotency key ``request_id``, if any."""
        with self._read() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.request_id == request_id)).first()
        return None if row is None else self._job(row)

    def update(self, job_id: str, **changes: Any) -> None:
        changes.setdefault("updated_at", time.time())
        with self._write() as conn:
            conn.execute(
                jobs_table.update().where(jobs_table.c.job_id == job_id).values(**self._values(changes))
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
        return None if row is None else self._job(row)

    def jobs(self, states: Iterable[str] = (), limit: int = 100) -> list[JobRecord]:
        """The newest ``limit`` jobs (in ``states`` when given), newest first."""
        query = sa.select(jobs_table)
        states = list(states)
        if states:
            query = query.where(jobs_table.c.state.in_(states))
        query = query.order_by(jobs_table.c.created_at.desc(), jobs_table.c.job_id.desc()).limit(limit)
        with self._read() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def count_by_state(self) -> dict[str, int]:
        """Number of jobs in each state (states without jobs are absent)."""
        query = sa.select(jobs_table.c.state, sa.func.count()).group_by(jobs_table.c.state)
        with self._read() as conn:
            return {state: count for state, count in conn.execute(query)}

    def queue_position(self, job: JobRecord) -> int:
        """How many queued jobs for the same device come before ``job`` (-1 unless it is queued)."""
        if job.state != QUEUED:
            return -1
        c = jobs_table.c
        earlier = sa.or_(
            c.queued_at < job.queued_at, sa.and_(c.queued_at == job.queued_at, c.job_id < job.job_id)
        )
        query = sa.select(sa.func.count()).where(c.state == QUEUED, c.device == job.device, earlier)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    # -- events --------------------------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        *,
        expect: dict[str, Any] | None = None,
        **job_changes: Any,
    ) -> int | None:
        """Append an event and apply ``job_changes`` in one transaction; return its sequence number, or
        None when the job's columns do not hold the values in ``expect`` (nothing is written then)."""
        with self._write() as conn:
            return self._append(conn, job_id, kind, payload, expect or {}, job_changes)

    def _append(
        self,
        conn: Connection,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        expect: dict[str, Any],
        changes: dict[str, Any],
    ) -> int | None:
        now = time.time()
        c = jobs_table.c
        sequence = conn.execute(
            jobs_table.update()
            .where(c.job_id == job_id, *(c[name] == value for name, value in expect.items()))
            .values(last_sequence=c.last_sequence + 1, **self._values({"updated_at": now, **changes}))
            .returning(c.last_sequence)
        ).scalar()
        if sequence is None:
            return None
        conn.execute(
            events_table.insert().values(
                job_id=job_id, sequence=sequence, kind=kind, time=now, payload=json.dumps(payload)
            )
        )
        return int(sequence)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        """Up to ``limit`` events of the job's history with sequence > ``after``, in order."""
        e = events_table.c
        query = (
            sa.select(events_table)
            .where(e.job_id == job_id, e.sequence > after, e.superseded == sa.false())
            .order_by(e.sequence)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                EventRecord(r.job_id, r.sequence, r.kind, r.time, json.loads(r.payload))
                for r in conn.execute(query)
            ]

    def supersede_events(
        self, job_id: str, after: int, *, expect: dict[str, Any] | None = None, **job_changes: Any
    ) -> bool:
        """Take the events after sequence ``after`` that a resumed run records again (under new, higher
        sequence numbers) out of the job's history (``supersede_replayed``: state events stay; ``step`` in
        ``job_changes`` is the checkpoint's) and apply ``job_changes``; False (nothing written) when the
        job does not hold the values in ``expect``."""
        c = jobs_table.c
        with self._write() as conn:
            changed = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, *(c[name] == value for name, value in (expect or {}).items()))
                .values(**self._values({"updated_at": time.time(), **job_changes}))
            ).rowcount
            if not changed:
                return False
            supersede_replayed(conn, job_id, after, job_changes.get("step"))
        return True
