"""The server side of data-parallel training: launch a job's W worker processes
(``python -m nnprobe_services.sequence.lm.distributed``), relay rank 0's events and checkpoint notices to
the job store, stop the workers at a step boundary when asked, and reap them. No worker survives
``run_job``.

The server hosts the rendezvous store (a ``TCPStore`` on a free loopback port, as torchrun's agent does,
so there is no port race) and starts each worker in its own session, holding one end of a socket pair;
the server sends ``stop`` over it, rank 0 sends events and checkpoint notices back. A worker whose socket
closes (the server died) exits at once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nnprobe_services.sequence.lm.distributed import MODULE
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Event

log = logging.getLogger("nnprobe.sequence.lm.supervisor")

#: How long a stopped job's workers get to reach a step boundary and checkpoint before they are killed
#: (shorter when the stop signal carries an earlier ``deadline``, as on server shutdown).
STOP_GRACE_SECONDS = 90.0


class WorkerFailed(RuntimeError):
    """A worker process exited with an error; the job fails with its log's last lines."""


_groups: weakref.WeakSet[WorkerGroup] = weakref.WeakSet()


@atexit.register
def _kill_all_groups() -> None:
    for group in list(_groups):
        group.kill()


def loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name.startswith("lo")), None)


class WorkerGroup:
    """W worker processes of one job, each in its own session with a socket pair to the server."""

    def __init__(self, folder: Path, spec_path: Path, checkpoint_path: Path, world: int, port: int) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.sockets: list[socket.socket] = []
        env = _worker_environment(world, port)
        _groups.add(self)
        try:
            for rank in range(world):
                ours, theirs = socket.socketpair()
                self.sockets.append(ours)
                with theirs, (folder / f"rank{rank}.log").open("ab") as log_file:
                    command = [sys.executable, "-m", MODULE, "--spec", str(spec_path)]
                    command += [
                        "--channel-fd",
                        str(theirs.fileno()),
                        "--checkpoint-path",
                        str(checkpoint_path),
                    ]
                    proc = subprocess.Popen(
                        command,
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        pass_fds=[theirs.fileno()],
                        start_new_session=True,
                    )
                self.procs.append(proc)
        except BaseException:
            self.kill()
            raise

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def send_all(self, message: dict[str, Any]) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # that worker is gone already; ``failure`` reports it
                sock.sendall((json.dumps(message) + "\n").encode())

    def failure(self) -> str | None:
        """A description of the first worker that exited with an error, if any."""
        for rank, proc in enumerate(self.procs):
            code = proc.poll()
            if code not in (None, 0):
                path = self.folder / f"rank{rank}.log"
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                last = lines[-1].strip() if lines else "no output"
                return f"data-parallel worker rank {rank} exited with status {code}: {last} (log: {path})"
        return None

    def all_exited(self) -> bool:
        return all(proc.poll() is not None for proc in self.procs)

    def kill(self) -> None:
        """SIGKILL every worker's session (the worker and anything it started) and reap it."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.error("worker %d did not exit after SIGKILL", proc.pid)
        for sock in self.sockets:
            sock.close()
        _groups.discard(self)


def _worker_environment(world: int, port: int) -> dict[str, str]:
    """torchrun's contract, with this server as the agent hosting the store on 127.0.0.1:port."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        GROUP_RANK="0",
        TORCHELASTIC_USE_AGENT_STORE="True",
        OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // world)),
    )
    interface = loopback_interface()
    if interface is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", interface)
    return env


def run_job(
    manager: Any,
    job: Any,
    config: TrainingConfig,
    splits: dict[str, torch.Tensor],
    vocab: list[str],
    payload: dict[str, Any] | None,
    stop: threading.Event,
) -> bool:
    """``JobManager``'s runner for ``workers`` > 1: launch, relay, stop and reap the workers. True when
    the job finished; False when stopped (the workers wrote a final checkpoint, or were killed after
    ``STOP_GRACE_SECONDS``); raises when a worker failed. No worker survives this call."""
    folder = manager.root / job.job_id / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.pt"
    spec = {
        "config": config.to_dict(),
        "vocab": vocab,
        "splits": splits,
        "device": job.device,
        "corpus_id": job.corpus_id,
        "resume": payload is not None,
        "samples": manager.training_logs.writing(job.job_id),  # rank 0 draws text samples for the log
    }
    torch.save(spec, spec_path)
    store = dist.TCPStore("127.0.0.1", 0, config.workers, is_master=True, wait_for_workers=False)
    group = WorkerGroup(folder, spec_path, manager.checkpoint_path(job.job_id), config.workers, store.port)
    log.info("job %s: %d workers %s on port %d", job.job_id, config.workers, group.pids, store.port)
    try:
        return _supervise(group, lambda message: _relay(manager, job.job_id, group, message), stop)
    finally:
        group.kill()
        del store


def _relay(manager: Any, job_id: str, group: WorkerGroup, message: dict[str, Any]) -> bool | None:
    """Act on one message from rank 0; returns ``finished`` for the final message."""
    kind = message["type"]
    if kind == "event":
        manager.record(job_id, Event(**message["event"]))
    elif kind == "sequence":
        reply = {"type": "sequence", "sequence": manager.get(job_id).last_sequence}
        group.sockets[0].sendall((json.dumps(reply) + "\n").encode())
    elif kind == "checkpoint":
        manager.record_checkpoint(job_id, message["step"], message["sha256"])
    elif kind == "done":
        return bool(message["finished"])
    return None


def _supervise(
    group: WorkerGroup, relay: Callable[[dict[str, Any]], bool | None], stop: threading.Event
) -> bool:
    """Relay rank 0's messages until every worker has exited; send ``stop`` once ``stop`` is set and kill
    the workers when they have not stopped by ``stop.deadline`` (a ``time.monotonic()`` value, when the
    signal carries one) or ``STOP_GRACE_SECONDS`` after it."""
    selector = selectors.DefaultSelector()
    selector.register(group.sockets[0], selectors.EVENT_READ)
    buffer = b""
    finished: bool | None = None
    leader_closed = False
    deadline: float | None = None
    while True:
        if stop.is_set() and deadline is None:
            group.send_all({"type": "stop"})
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            given = getattr(stop, "deadline", None)
            deadline = min(deadline, given) if given is not None else deadline
        for _ in selector.select(timeout=0.2):
            data = group.sockets[0].recv(1 << 16)
            if not data:
                leader_closed = True
                selector.unregister(group.sockets[0])
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                result = relay(json.loads(line))
                finished = result if result is not None else finished
        failure = group.failure()
        if failure is not None:
            raise WorkerFailed(failure)
        if leader_closed and group.all_exited():
            if finished is None:
                raise WorkerFailed("data-parallel rank 0 exited without reporting a result")
            return finished
        if deadline is not None and time.monotonic() > deadline:
            log.warning("workers %s did not stop in time; killing them", group.pids)
            return False
