"""The job store's shared queue: claims, leases, hand-overs, cancel requests. ``JobStore`` (``store.py``)
mixes this in; the methods run on its engine, transactions and row helpers.

Replicas claim queued jobs with row locks (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite:
``BEGIN IMMEDIATE``) and hold a running job by a lease that their heartbeat renews; a job whose lease
expired is claimable again (a takeover), and a replica that stops gracefully releases its jobs (a
hand-over). Each claim and each release advances ``attempt``, the fencing token of the owner's writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nnprobe_services.sequence.jobs.records import CANCELLED, INTERRUPTED, QUEUED, RUNNING, Claim, JobRecord
from nnprobe_services.sequence.jobs.schema import events as events_table
from nnprobe_services.sequence.jobs.schema import jobs as jobs_table


def supersede_replayed(conn: Connection, job_id: str, after: int, step: int | None) -> None:
    """Take out of the job's history the events after sequence ``after`` that a run continuing from the
    checkpoint at ``step`` records again: its step, evaluation and checkpoint events past ``step`` (every
    such event after ``after`` when ``step`` is None). State events stay, and so does the event of the
    checkpoint the run continues from: the history keeps that the job was cancelled, handed over or taken
    over, in order, whatever came after."""
    e = events_table.c
    rows = conn.execute(
        sa.select(e.sequence, e.kind, e.payload).where(
            e.job_id == job_id, e.sequence > after, e.superseded == sa.false()
        )
    ).all()
    replayed = [
        row.sequence
        for row in rows
        if row.kind != "state" and (step is None or json.loads(row.payload).get("step", step + 1) > step)
    ]
    if replayed:
        conn.execute(
            events_table.update().where(e.job_id == job_id, e.sequence.in_(replayed)).values(superseded=True)
        )


class SharedQueue:
    """The queue operations of ``JobStore`` (see the module docstring)."""

    if TYPE_CHECKING:  # provided by JobStore
        _clock: Any

        def _write(self) -> contextlib.AbstractContextManager[Connection]: ...

        @staticmethod
        def _job(row: Any) -> JobRecord: ...

        @staticmethod
        def _values(changes: dict[str, Any]) -> dict[str, Any]: ...

        def _append(
            self,
            conn: Connection,
            job_id: str,
            kind: str,
            payload: dict[str, Any],
            expect: dict[str, Any],
            changes: dict[str, Any],
        ) -> int | None: ...

    def claim_next(
        self, replica_id: str, devices: Sequence[str], lease_seconds: float, max_takeovers: int
    ) -> Claim | None:
        """Claim the oldest job for one of ``devices`` that is queued or running under an expired lease;
        None when there is none. The claim sets state RUNNING, owner ``replica_id``, a lease of
        ``lease_seconds`` and ``attempt + 1``. A job whose lease expired ``max_takeovers`` times in a row
        is not claimed again but left INTERRUPTED (a job that kills every replica must not cycle)."""
        c = jobs_table.c
        if not devices:
            return None
        with self._write() as conn:
            while True:
                now = float(conn.execute(sa.select(self._clock)).scalar_one())
                claimable = sa.or_(c.state == QUEUED, sa.and_(c.state == RUNNING, c.lease_expires_at < now))
                row = conn.execute(
                    sa.select(jobs_table)
                    .where(c.device.in_(list(devices)), claimable)
                    .order_by(c.queued_at, c.job_id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                job = self._job(row)
                takeover = job.state == RUNNING
                if takeover and job.takeovers >= max_takeovers:
                    message = (
                        f"the lease of replica {job.owner} expired and the job was taken over "
                        f"{job.takeovers} times already (max_job_takeovers); resume it to try again"
                    )
                    self._append(
                        conn,
                        job.job_id,
                        "state",
                        {"state": INTERRUPTED, "message": message, "step": job.step, "epoch": job.epoch},
                        {"attempt": job.attempt},
                        {"state": INTERRUPTED, "error": message, "owner": "", "lease_expires_at": 0.0},
                    )
                    continue
                changes = {
                    "state": RUNNING,
                    "owner": replica_id,
                    "lease_expires_at": now + lease_seconds,
                    "attempt": job.attempt + 1,
                    "takeovers": job.takeovers + 1 if takeover else job.takeovers,
                    "updated_at": time.time(),
                }
                conn.execute(jobs_table.update().where(c.job_id == job.job_id).values(**changes))
                previous = job.owner
                for name, value in changes.items():
                    setattr(job, name, value)
                return Claim(job, takeover, previous)

    def release(
        self,
        job_id: str,
        replica_id: str,
        attempt: int,
        after: int,
        payload: dict[str, Any],
        **job_changes: Any,
    ) -> int | None:
        """Hand a job this replica runs under claim ``attempt`` back to the queue (a graceful stop): in
        one transaction, the job becomes QUEUED with no owner and no lease (claimable at once, keeping its
        place in the queue), ``attempt`` advances (the old lease's writes and renewals are refused from
        now on), the events after sequence ``after`` that the next run records again leave the history
        (``supersede_replayed``; ``step`` in ``job_changes`` is the checkpoint's), ``job_changes`` are
        applied and the state event ``payload`` is appended. ``takeovers`` is unchanged: a release is not
        a takeover after a death. Returns the event's sequence, or None
        (nothing written) when the lease is no longer this replica's."""
        c = jobs_table.c
        changes = {
            "state": QUEUED,
            "owner": "",
            "lease_expires_at": 0.0,
            "attempt": attempt + 1,
            "updated_at": time.time(),
            **job_changes,
        }
        with self._write() as conn:
            released = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, c.owner == replica_id, c.attempt == attempt, c.state == RUNNING)
                .values(**self._values(changes))
            ).rowcount
            if not released:
                return None
            supersede_replayed(conn, job_id, after, job_changes.get("step"))
            return self._append(conn, job_id, "state", payload, {}, {})

    def renew_lease(self, job_id: str, replica_id: str, attempt: int, lease_seconds: float) -> bool | None:
        """Extend the lease of a job this replica runs; return whether a cancel was requested, or None
        when the lease is lost (the job was taken over, or it left RUNNING)."""
        c = jobs_table.c
        with self._write() as conn:
            now = float(conn.execute(sa.select(self._clock)).scalar_one())
            requested = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, c.owner == replica_id, c.attempt == attempt, c.state == RUNNING)
                .values(lease_expires_at=now + lease_seconds)
                .returning(c.cancel_requested)
            ).scalar()
        return None if requested is None else bool(requested)

    def request_cancel(self, job_id: str) -> str:
        """Cancel a queued job at once, or flag a running one for its owner; return the state found
        (``queued``: now cancelled; ``running``: flagged; anything else: nothing done)."""
        c = jobs_table.c
        with self._write() as conn:
            payload = {"state": CANCELLED, "message": "cancelled while queued"}
            if self._append(conn, job_id, "state", payload, {"state": QUEUED}, {"state": CANCELLED}):
                return QUEUED
            flagged = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, c.state == RUNNING)
                .values(cancel_requested=True, updated_at=time.time())
            ).rowcount
            if flagged:
                return RUNNING
            state = conn.execute(sa.select(c.state).where(c.job_id == job_id)).scalar()
        return str(state or "")

    def expire_leases(self, owner: str) -> int:
        """End the leases of the running jobs ``owner`` holds (a replica restarting under the same id
        knows their runner died); return how many."""
        c = jobs_table.c
        with self._write() as conn:
            return int(
                conn.execute(
                    jobs_table.update()
                    .where(c.owner == owner, c.state == RUNNING)
                    .values(lease_expires_at=0.0)
                ).rowcount
            )
