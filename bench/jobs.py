"""The job store side by side on SQLite and PostgreSQL (a durable server started for the run: fsync on).

- cost per training step: one fenced event append (what a training step costs the store when every step
  is logged) and one lease renewal, in milliseconds;
- queue drain: N replicas (threads, each with its own connection pool, claiming like a sequence server's
  supervisor) x M jobs of S recorded steps each: seconds to drain, and the claims each replica won;
- takeover latency: a replica claims a job and dies (stops renewing); another replica polling every P
  seconds claims it: seconds from the death to the takeover, against the lease L.

The jobs here only record steps (no training), so the figures are the store's share alone.

    python bench/jobs.py [--replicas 3] [--jobs 24] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnprobe.cli.output import print_table
from nnprobe_services.sequence.jobs.store import QUEUED, JobRecord, JobStore

from tests.support.postgres import postgres_server


def new_job(job_id: str, queued_at: float) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, "bench", "corpus", QUEUED, {}, "cpu", now, now, queued_at=queued_at)


def step_cost(url: str, steps: int) -> tuple[float, float]:
    """Median milliseconds of a fenced step event and of a lease renewal."""
    store = JobStore(url)
    store.insert(new_job("job-steps", 0.0))
    claim = store.claim_next("r", ["cpu"], 60, 3)
    assert claim is not None
    fence = {"owner": "r", "attempt": claim.job.attempt}
    appends, renewals = [], []
    for step in range(steps):
        started = time.perf_counter()
        store.add_event("job-steps", "step", {"step": step, "loss": 1.0}, expect=fence, step=step, loss=1.0)
        appends.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.renew_lease("job-steps", "r", claim.job.attempt, 60)
        renewals.append(time.perf_counter() - started)
    store.close()
    return 1000 * statistics.median(appends), 1000 * statistics.median(renewals)


def drain(url: str, replicas: int, jobs: int, steps: int) -> tuple[float, Counter]:
    """Seconds for ``replicas`` claimers to run ``jobs`` jobs of ``steps`` events; claims per replica."""
    setup = JobStore(url)
    for i in range(jobs):
        setup.insert(new_job(f"job-drain-{i:04d}", float(i)))
    stores = [JobStore(url) for _ in range(replicas)]
    won: Counter = Counter()

    def replica(index: int) -> None:
        name = f"r{index}"
        while (claim := stores[index].claim_next(name, ["cpu"], 60, 3)) is not None:
            fence = {"owner": name, "attempt": claim.job.attempt}
            for step in range(steps):
                stores[index].add_event(claim.job.job_id, "step", {"step": step}, expect=fence, step=step)
            stores[index].add_event(claim.job.job_id, "state", {"state": "succeeded"}, state="succeeded")
            won[name] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=replica, args=(i,)) for i in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    seconds = time.perf_counter() - started
    for store in [setup, *stores]:
        store.close()
    return seconds, won


def takeover(url: str, lease: float, poll: float) -> float:
    """Seconds from a claimant's death to another replica's claim."""
    dead, alive = JobStore(url), JobStore(url)
    dead.insert(new_job("job-takeover", 0.0))
    assert dead.claim_next("dead", ["cpu"], lease, 3) is not None
    died = time.perf_counter()  # the claimant renews no more from here
    while alive.claim_next("alive", ["cpu"], lease, 3) is None:
        time.sleep(poll)
    seconds = time.perf_counter() - died
    dead.close()
    alive.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.25)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder, postgres_server(durable=True) as pg:
        urls = {"sqlite": f"sqlite:///{Path(folder) / '{name}.sqlite3'}", "postgresql": None}
        figures: dict[str, list[float]] = {}
        claims: dict[str, Counter] = {}
        for backend in ("sqlite", "postgresql"):

            def fresh(name: str, backend: str = backend) -> str:
                if backend == "sqlite":
                    return str(urls["sqlite"]).format(name=name)
                return pg.create_database()

            append_ms, renew_ms = step_cost(fresh("steps"), 200)
            seconds, won = drain(fresh("drain"), args.replicas, args.jobs, args.steps)
            latency = takeover(fresh("takeover"), args.lease, args.poll)
            figures[backend] = [append_ms, renew_ms, seconds, latency]
            claims[backend] = won
        for label, index, unit in (
            ("step event (fenced append), median", 0, "ms"),
            ("lease renewal, median", 1, "ms"),
            (f"drain {args.replicas} replicas x {args.jobs} jobs x {args.steps} steps", 2, "s"),
            (f"takeover after death (lease {args.lease} s, poll {args.poll} s)", 3, "s"),
        ):
            sqlite, postgres = figures["sqlite"][index], figures["postgresql"][index]
            rows.append([label, f"{sqlite:.3f} {unit}", f"{postgres:.3f} {unit}", f"{postgres / sqlite:.2f}"])
        for backend in ("sqlite", "postgresql"):
            won = claims[backend]
            rows.append(
                [f"claims per replica ({backend})", *[""] * 2, " ".join(str(won[k]) for k in sorted(won))]
            )
    print_table(rows, ["measure", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"])


if __name__ == "__main__":
    main()
