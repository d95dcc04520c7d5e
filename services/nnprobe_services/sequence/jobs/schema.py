"""The job database's schema and its numbered migrations, one code path for SQLite and PostgreSQL
(SQLAlchemy 2 Core).

``migrate(engine)`` runs at every start: it takes the database's migration lock (PostgreSQL: a
transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE``), reads ``schema_migrations`` and applies the
migrations not yet recorded, each in the same transaction as its record, so replicas starting together
apply each migration exactly once. A database written by a newer server (a higher version) is refused.

Version 1 is the schema of the embedded store before replicas shared it (a database without
``schema_migrations`` but with ``jobs`` is at version 1); version 2 adds ownership, leases, takeovers,
cancellation requests and superseded events; version 3 adds the client's idempotency key of
StartTraining (``request_id``, unique among the jobs that have one) and the digest of that request;
version 4 adds the corpus name, the best-validation checkpoint's step and perplexity, and why a finished
job stopped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

#: Seconds since the Unix epoch, as 8-byte floats on both backends (PostgreSQL's REAL has 4).
Seconds = sa.Float(precision=53)

metadata = sa.MetaData()


def _job_columns() -> list[sa.Column]:
    """The columns of ``jobs`` at version 1."""
    return [
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("corpus_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_steps", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("steps_per_epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("loss", Seconds, nullable=False, server_default="0"),
        sa.Column("valid_perplexity", Seconds, nullable=False, server_default="0"),
        sa.Column("test_perplexity", Seconds, nullable=False, server_default="0"),
        sa.Column("checkpoint_step", sa.BigInteger, nullable=False, server_default="-1"),
        sa.Column("checkpoint_sha256", sa.Text, nullable=False, server_default=""),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("elapsed_seconds", Seconds, nullable=False, server_default="0"),
        sa.Column("tokens_per_second", Seconds, nullable=False, server_default="0"),
        sa.Column("vocab_size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("parameters", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_sequence", sa.BigInteger, nullable=False, server_default="0"),
    ]


def _event_columns() -> list[sa.Column]:
    return [
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("time", Seconds, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    ]


#: Columns version 2 adds to ``jobs``: (name, type, default as SQL).
LEASE_COLUMNS: list[tuple[str, sa.types.TypeEngine, str]] = [
    # The replica running the job ('' when none).
    ("owner", sa.Text(), "''"),
    # When the owner's lease ends, in seconds on the database's clock; another replica may take the job
    # over once it has passed.
    ("lease_expires_at", Seconds, "0"),
    # How many times a replica claimed the job: the fencing token of the current owner's writes.
    ("attempt", sa.BigInteger(), "0"),
    # Claims that followed an expired lease since the job was last started or resumed.
    ("takeovers", sa.BigInteger(), "0"),
    # CancelJob reached some replica; the owner's heartbeat reads it and stops the job.
    ("cancel_requested", sa.Boolean(), "false"),
    # Queue order: when the job was (re)queued.
    ("queued_at", Seconds, "0"),
]
#: Columns version 3 adds to ``jobs``.
REQUEST_COLUMNS: list[tuple[str, sa.types.TypeEngine, str]] = [
    # The client's idempotency key of the StartTraining call that created the job ('' when none); unique
    # among the jobs that have one (the partial index ``jobs_request_id``).
    ("request_id", sa.Text(), "''"),
    # sha256 (hex) of that request's canonical form without the key: a retry must carry the same request.
    ("request_digest", sa.Text(), "''"),
]
#: Columns version 4 adds to ``jobs``.
OUTCOME_COLUMNS: list[tuple[str, sa.types.TypeEngine, str]] = [
    # The corpus's name at start ('ptb', or the name given at upload).
    ("corpus_name", sa.Text(), "''"),
    # The step of the best-validation checkpoint (-1: none yet) and its validation perplexity.
    ("best_step", sa.BigInteger(), "-1"),
    ("best_valid_perplexity", Seconds, "0"),
    # Why a finished job stopped ('' until it succeeds).
    ("stop_reason", sa.Text(), "''"),
]
jobs = sa.Table(
    "jobs",
    metadata,
    *_job_columns(),
    *(
        sa.Column(name, type_, nullable=False, server_default=sa.text(default))
        for name, type_, default in LEASE_COLUMNS + REQUEST_COLUMNS + OUTCOME_COLUMNS
    ),
)
events = sa.Table(
    "events",
    metadata,
    *_event_columns(),
    # A resumed or taken-over run replays the events after its checkpoint; the earlier run's are kept
    # under their sequence numbers (sequences only grow) but no longer belong to the job's history.
    sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.text("false")),
)

migrations_table = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", Seconds, nullable=False),
)

#: An arbitrary 64-bit key for PostgreSQL's advisory lock held while migrating.
MIGRATION_LOCK_KEY = 0x6E6E70726F6265


def _create_version_1(conn: Connection) -> None:
    """``jobs`` and ``events`` as the embedded store first wrote them (no lease columns)."""
    if sa.inspect(conn).has_table("jobs"):
        return  # a database from before schema_migrations existed
    v1 = sa.MetaData()
    sa.Table("jobs", v1, *_job_columns())
    sa.Table("events", v1, *_event_columns())
    v1.create_all(conn)


def _add_leases(conn: Connection) -> None:
    for name, type_, default in LEASE_COLUMNS:
        sql_type = type_.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type} NOT NULL DEFAULT {default}"))
    conn.execute(sa.text("ALTER TABLE events ADD COLUMN superseded BOOLEAN NOT NULL DEFAULT false"))
    conn.execute(sa.text("UPDATE jobs SET queued_at = created_at"))
    conn.execute(sa.text("CREATE INDEX jobs_queue ON jobs (state, device, queued_at)"))


def _add_request_ids(conn: Connection) -> None:
    for name, type_, default in REQUEST_COLUMNS:
        sql_type = type_.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type} NOT NULL DEFAULT {default}"))
    # Partial: jobs started without a key ('') do not collide. Both SQLite and PostgreSQL enforce it.
    conn.execute(sa.text("CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id <> ''"))


def _add_outcomes(conn: Connection) -> None:
    for name, type_, default in OUTCOME_COLUMNS:
        sql_type = type_.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type} NOT NULL DEFAULT {default}"))
    conn.execute(sa.text("UPDATE jobs SET corpus_name = corpus_id"))


#: Migration ``i + 1`` is ``MIGRATIONS[i]``.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_version_1,
    _add_leases,
    _add_request_ids,
    _add_outcomes,
]
VERSION = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The highest applied migration (0: an empty database; 1: a database from before the table)."""
    inspector = sa.inspect(conn)
    if not inspector.has_table("schema_migrations"):
        return 1 if inspector.has_table("jobs") else 0
    version = conn.execute(sa.select(sa.func.max(migrations_table.c.version))).scalar()
    return int(version or 0)


def migrate(engine: Engine, now: Callable[[], float]) -> tuple[int, int]:
    """Bring the database to ``VERSION``; return (version found, version now).

    Raises ``RuntimeError`` when the database is newer than this code."""
    with engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            found = current_version(conn)
            if found > VERSION:
                raise RuntimeError(
                    f"the job database is at schema version {found}; this server knows up to {VERSION}"
                )
            if not sa.inspect(conn).has_table("schema_migrations"):
                migrations_table.create(conn)
                if found == 1:  # the embedded store's schema before migrations were recorded
                    conn.execute(migrations_table.insert().values(version=1, applied_at=now()))
            for version in range(found + 1, VERSION + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(migrations_table.insert().values(version=version, applied_at=now()))
    return found, VERSION
