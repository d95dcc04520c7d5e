"""Data-parallel training with ``torch.distributed``, the worker side: W worker processes, rank r owning
the contiguous streams [r B/W, (r + 1) B/W) of the batch, gradients averaged with ``all_reduce`` (gloo on
CPU, NCCL on CUDA), so every update is the single-process update on the global batch.

One worker program (``python -m nnprobe_services.sequence.lm.distributed``) speaking torchrun's environment
contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), run two ways:

* Server-launched (a job with ``workers`` > 1; ``supervisor`` starts and stops the workers): each worker
  holds one end of a socket pair; the server sends ``stop`` over it, rank 0 sends events and checkpoint
  notices back. A worker whose socket closes (the server died) exits at once, so no worker outlives its
  server.
* torchrun, on one or several machines (``main`` without ``--spec``): rank 0 writes ``events.jsonl`` and
  ``checkpoint.pt`` under ``--out`` and a rerun resumes from that checkpoint; SIGTERM/SIGINT stop every
  rank at the next step boundary after a final checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
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
    samples: bool = False  # rank 0 draws each evaluation's text sample (the server writes a log)


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
        leader = reducer.rank == 0
        samples = (lambda: True) if leader and spec.samples else None
        trainer = Trainer(config, spec.vocab, spec.splits, device, spec.checkpoint, reducer, samples)

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
        digest = checkpoints.save_last_and_best(self.checkpoint_path, payload)
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
        checkpoints.save_last_and_best(self.out / "checkpoint.pt", payload)

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
            raw.get("samples", False),
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


if __name__ == "__main__":
    sys.exit(main())
