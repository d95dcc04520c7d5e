"""Data-parallel training with ``torch.distributed``: W worker processes, rank r owning the contiguous
streams [r B/W, (r + 1) B/W) of the batch, gradients averaged with ``all_reduce`` (gloo on CPU, NCCL on
CUDA), so every update is the single-process update on the global batch.

Two ways to run the workers, one worker program (``python -m nnprobe_services.sequence.lm.distributed``)
speaking torchrun's environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

* Server-launched (``run_job``, a job with ``workers`` > 1): the server hosts the rendezvous store (a
  ``TCPStore`` on a free loopback port, as torchrun's agent does, so there is no port race) and starts W
  workers as subprocesses in their own sessions. Each worker holds one end of a socket pair; the server
  sends ``stop`` over it, rank 0 sends events and checkpoint notices back. A worker whose socket closes
  (the server died) exits at once, so no worker outlives its server.
* torchrun, on one or several machines (``main`` without ``--spec``): rank 0 writes ``events.jsonl`` and
  ``checkpoint.pt`` under ``--out`` and a rerun resumes from that checkpoint; SIGTERM/SIGINT stop every
  rank at the next step boundary after a final checkpoint.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nnprobe_services.sequence.lm import checkpoints
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Event, Trainer

log = logging.getLogger("nnprobe.sequence.lm.distributed")

MODULE = "nnprobe_services.sequence.lm.distributed"
#: How long a stopped job's workers get to reach a step boundary and checkpoint before they are killed.
STOP_GRACE_SECONDS = 90.0
#: Exit status of a worker whose server went away.
EXIT_ORPHANED = 75


# -- the process group -------------------------------------------------------------------------------
class ProcessGroupReducer:
    """``training.Reducer`` over the default ``torch.distributed`` process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device

    def average_gradients(self, model: nn.Module) -> None:
        """One all_reduce over all gradients flattened into a single buffer, then divide by W."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def average(self, value: torch.Tensor) -> torch.Tensor:
        return self.sum(value) / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def any(self, flag: bool) -> bool:
        value = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> list[Any]:
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, value)
        return parts


def worker_device(name: str, local_rank: int) -> torch.device:
    """The device of a worker: CUDA workers on one machine take consecutive GPUs from the job's index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    index = ((device.index or 0) + local_rank) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# -- one worker ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    """What a worker trains: the job's config, vocabulary, splits, device and checkpoint to resume."""

    config: TrainingConfig
    vocab: list[str]
    splits: dict[str, torch.Tensor]
    device: str
    corpus_id: str
    checkpoint: dict[str, Any] | None


class Sink:
    """Where rank 0 sends events and checkpoints, and where every rank learns that it should stop."""

    def event(self, event: Event) -> None: ...

    def checkpoint(self, payload: dict[str, Any]) -> None: ...

    def should_stop(self) -> bool:
        return False

    def done(self, finished: bool) -> None: ...


def train(spec: Spec, sink: Sink) -> bool:
    """Join the process group (env://), train this rank's slice, leave; True when the job finished."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = worker_device(spec.device, local_rank)
    dist.init_process_group(backend_for(device), init_method="env://", timeout=timedelta(minutes=30))
    try:
        reducer = ProcessGroupReducer(device)
        log.info("joined a group of %d (%s) on %s", reducer.world_size, backend_for(device), device)
        if spec.config.batch_size % reducer.world_size:
            raise ValueError(f"{reducer.world_size} workers must divide batch_size {spec.config.batch_size}")
        config = dataclasses.replace(spec.config, workers=reducer.world_size, device=str(device))
        trainer = Trainer(config, spec.vocab, spec.splits, device, spec.checkpoint, reducer)
        leader = reducer.rank == 0

        def on_checkpoint(t: Trainer) -> None:
            payload = t.checkpoint()  # a collective: every rank gathers, rank 0 writes
            if leader:
                sink.checkpoint(payload)

        def on_event(event: Event) -> None:
            if leader:
                sink.event(event)

        finished = trainer.run(on_event, sink.should_stop, on_checkpoint)
        log.info("%s at step %d", "finished" if finished else "stopped", trainer.step)
        if not finished:
            on_checkpoint(trainer)
        if leader:
            sink.done(finished)
        dist.barrier()
        return finished
    finally:
        dist.destroy_process_group()


class ServerSink(Sink):
    """A server-launched worker's end of its socket pair (JSON lines both ways)."""

    def __init__(self, fd: int, checkpoint_path: Path) -> None:
        self.socket = socket.socket(fileno=fd)
        self.checkpoint_path = checkpoint_path
        self.corpus_id = ""
        self.stop = threading.Event()
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="server-channel", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.socket.makefile("r", encoding="utf-8"):
                message = json.loads(line)
                if message["type"] == "stop":
                    self.stop.set()
                else:
                    self.replies.put(message)
        except (OSError, ValueError):
            pass  # a reset counts as a close
        finally:
            # The server closed its end (it died or gave up on this job): exit now. No one records a
            # checkpoint any more, and the job resumes from its last recorded one.
            os._exit(EXIT_ORPHANED)

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.socket.sendall((json.dumps(message) + "\n").encode())

    def event(self, event: Event) -> None:
        self.send({"type": "event", "event": dataclasses.asdict(event)})

    def checkpoint(self, payload: dict[str, Any]) -> None:
        self.send({"type": "sequence"})
        payload["sequence"] = self.replies.get()["sequence"]
        payload["corpus_id"] = self.corpus_id
        digest = checkpoints.save(self.checkpoint_path, payload)
        self.send({"type": "checkpoint", "step": payload["step"], "sha256": digest})

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def done(self, finished: bool) -> None:
        self.send({"type": "done", "finished": finished})


class DirectorySink(Sink):
    """A torchrun worker's output folder: ``events.jsonl`` (one event a line) and ``checkpoint.pt``
    (``sequence`` = the number of event lines it covers, so a resumed run drops the lines after it)."""

    def __init__(self, out: Path, corpus_id: str, resumed_lines: int | None) -> None:
        self.out = out
        self.corpus_id = corpus_id
        self.stop = threading.Event()
        self.events = out / "events.jsonl"
        lines = self.events.read_text().splitlines(keepends=True) if self.events.is_file() else []
        if dist_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            kept = lines[:resumed_lines] if resumed_lines is not None else []
            self.events.write_text("".join(kept))
        self.lines = resumed_lines if resumed_lines is not None else 0
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: self.stop.set())

    def event(self, event: Event) -> None:
        with self.events.open("a") as file:
            file.write(json.dumps(dataclasses.asdict(event)) + "\n")
        self.lines += 1
        print(_describe(event), flush=True)

    def checkpoint(self, payload: dict[str, Any]) -> None:
        payload["sequence"] = self.lines
        payload["corpus_id"] = self.corpus_id
        checkpoints.save(self.out / "checkpoint.pt", payload)

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def done(self, finished: bool) -> None:
        print("finished" if finished else "stopped; run the same command again to resume", flush=True)


def dist_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _describe(event: Event) -> str:
    if event.kind == "step":
        return (
            f"step {event.step}/{event.total_steps} epoch {event.epoch} loss {event.loss:.4f} "
            f"ppl {event.perplexity:.2f} {event.tokens_per_second:.0f} tokens/s"
        )
    return f"epoch {event.epoch} valid ppl {event.valid_perplexity:.2f} test ppl {event.test_perplexity:.2f}"


# -- the worker program ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=(
            "Train the LSTM language model data-parallel: one process per rank, launched by torchrun "
            "(gloo on CPU, NCCL on CUDA). Each rank takes batch_size / WORLD_SIZE contiguous streams; "
            "rank 0 writes OUT/events.jsonl and OUT/checkpoint.pt, and a rerun resumes from that "
            "checkpoint exactly. Example, two machines with 4 GPUs each: torchrun --nnodes 2 "
            "--nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m "
            f"{MODULE} --corpus ptb --data-dir /data --config '{{\"batch_size\": 64}}' --out /shared/run1"
        ),
    )
    p.add_argument("--corpus", default="ptb", help="'ptb' or an uploaded corpus id under --data-dir")
    p.add_argument("--data-dir", type=Path, default=Path("."), help="the server data folder (corpora)")
    p.add_argument("--ptb-dir", type=Path, default=None, help="folder holding ptb.{train,valid,test}.txt")
    p.add_argument(
        "--config",
        default="{}",
        help="TrainingConfig fields as JSON, or @FILE holding it (defaults: the service's)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (rank r uses cuda:LOCAL_RANK)")
    p.add_argument("--out", type=Path, default=Path("lm-run"), help="output folder (rank 0 writes it)")
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--channel-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-path", type=Path, help=argparse.SUPPRESS)
    return p


def standalone_spec(args: argparse.Namespace) -> tuple[Spec, int | None]:
    from nnprobe_services.sequence.lm.corpus import CorpusStore

    path = args.out / "checkpoint.pt"
    payload = checkpoints.load(path) if path.is_file() else None
    if payload is not None:
        config = TrainingConfig.from_dict(payload["config"])
    else:
        text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
        config = TrainingConfig.from_dict(json.loads(text))
    corpus = CorpusStore(args.data_dir, args.data_dir / "cache", args.ptb_dir, 10.0).get(args.corpus)
    splits = {name: split.ids for name, split in corpus.splits.items()}
    spec = Spec(config, corpus.words, splits, args.device, args.corpus, payload)
    return spec, payload["sequence"] if payload is not None else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank {dist_rank()} %(levelname)s %(message)s"
    )
    sink: Sink
    if args.spec is not None:
        sink = server = ServerSink(args.channel_fd, args.checkpoint_path)  # watches the server from now on
        raw = torch.load(args.spec, weights_only=True)
        payload = checkpoints.load(args.checkpoint_path) if raw["resume"] else None
        spec = Spec(
            TrainingConfig.from_dict(raw["config"]),
            raw["vocab"],
            raw["splits"],
            raw["device"],
            raw["corpus_id"],
            payload,
        )
        server.corpus_id = spec.corpus_id
    else:
        spec, lines = standalone_spec(args)
        sink = DirectorySink(args.out, args.corpus, lines)
    train(spec, sink)
    log.info("exiting")
    if args.spec is not None:
        # Everything is recorded; skip the interpreter's teardown of torch (seconds on a busy machine).
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


# -- the server side -------------------------------------------------------------------------------------
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
            log.warning("workers %s did not stop within %.0f s; killing them", group.pids, STOP_GRACE_SECONDS)
            return False


if __name__ == "__main__":
    sys.exit(main())
