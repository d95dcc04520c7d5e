"""``nnprobe lm upload|train|watch|jobs|job|cancel|resume``: corpora and training jobs of
SequenceService's LSTM language model (the parsers are in :mod:`nnprobe.cli.lm`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from nnprobe.cli.output import (
    ProgressBar,
    client_kwargs,
    print_fields,
    print_json,
    print_table,
)
from nnprobe.config import DEFAULT_TIMEOUT
from nnprobe.errors import NnprobeError
from nnprobe.sequence import JobEvent, SequenceClient, TrainingJob


def _client(args: argparse.Namespace) -> SequenceClient:
    return SequenceClient(args.address, **client_kwargs(args))


def _job_rows(jobs: list[TrainingJob]) -> list[list]:
    return [
        [
            j.job_id,
            j.state,
            _corpus(j),
            f"{j.step}/{j.total_steps}",
            j.loss,
            _ppl(j.valid_perplexity),
            j.name,
        ]
        for j in jobs
    ]


JOB_HEADERS = ["job", "state", "corpus", "step", "loss", "valid ppl", "name"]


def _corpus(job: TrainingJob) -> str:
    """The corpus's name, with its id when they differ."""
    if not job.corpus_name or job.corpus_name == job.corpus_id:
        return job.corpus_id
    return f"{job.corpus_name} ({job.corpus_id})"


def _ppl(value: float, spec: str = "") -> float | str:
    """A perplexity for display: ``n/a`` for 0, the wire's "not evaluated" (no such split, or no
    evaluation yet; a perplexity is always >= 1)."""
    if value == 0:
        return "n/a"
    return format(value, spec) if spec else value


def _print_job(job: TrainingJob) -> None:
    c = job.config
    print_fields(
        [
            ("job", job.job_id),
            ("state", job.state),
            ("corpus", _corpus(job)),
            (
                "model",
                f"embed {c['embed_size']}, hidden {c['hidden_size']} x {c['num_layers']}, "
                f"vocab {job.vocab_size}",
            ),
            ("parameters", job.parameters),
            (
                "training",
                f"{c['optimizer']} lr {c['learning_rate']:g}, clip {c['clip_norm']:g}, "
                f"batch {c['batch_size']} x {c['sequence_length']}, {c['epochs']} epochs, seed {c['seed']}",
            ),
            ("step", f"{job.step}/{job.total_steps} (epoch {job.epoch}, {job.steps_per_epoch} steps each)"),
            ("loss", job.loss),
            ("valid perplexity", _ppl(job.valid_perplexity)),
            ("test perplexity", _ppl(job.test_perplexity)),
            ("tokens/s", job.tokens_per_second),
            ("elapsed s", job.elapsed_seconds),
            ("checkpoint step", job.checkpoint_step),
            *(
                [("best", f"step {job.best_step}, valid perplexity {job.best_valid_perplexity:.4f}")]
                if job.best_step >= 0
                else []
            ),
            *([("stopped", job.stop_reason)] if job.stop_reason else []),
            ("device", job.device),
            *([("error", job.error)] if job.error else []),
            *([("queue position", job.queue_position)] if job.queue_position >= 0 else []),
        ]
    )


def _follow(
    client: SequenceClient, job_id: str, after: int, as_json: bool, timeout: float | None = None
) -> TrainingJob:
    """Print evaluations and state changes, a progress bar for steps; return the final job. ``timeout``:
    the watch's deadline in seconds (None: until the job stops)."""
    bar: ProgressBar | None = None
    events: list[JobEvent] = []
    for event in client.watch_job(job_id, after_sequence=after, timeout=timeout):
        events.append(event)
        if as_json:
            continue
        if event.kind == "step":
            if bar is None:
                bar = ProgressBar(event.total_steps, job_id)
            bar.update(
                event.step,
                f"loss {event.loss:.3f} ppl {event.perplexity:.1f} {event.tokens_per_second:.0f} tok/s",
            )
        elif event.kind == "evaluation":
            print(
                f"\nepoch {event.epoch} step {event.step}: valid perplexity "
                f"{_ppl(event.valid_perplexity, '.2f')}, test perplexity {_ppl(event.test_perplexity, '.2f')}"
            )
        elif event.kind == "state":
            print(f"\n[{event.sequence}] {event.state}: {event.message}")
    if bar is not None:
        bar.close()
    job = client.get_job(job_id)
    if as_json:
        print_json({"events": events, "job": job})
    return job


def run_upload(args: argparse.Namespace) -> int:
    def read(path: Path | None) -> str:
        return path.read_text(encoding="utf-8") if path else ""

    with _client(args) as client:
        info = client.upload_corpus(read(args.train), read(args.valid), read(args.test), name=args.name)
    if args.json:
        print_json(info)
        return 0
    print_fields([("corpus", info.corpus_id), ("name", info.name), ("vocabulary", info.vocab_size)])
    print_table(
        [[s, n, info.unknown_tokens[s]] for s, n in info.tokens.items()], ["split", "tokens", "<unk>"]
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    options = {
        name: getattr(args, name)
        for name in (
            "embed_size",
            "hidden_size",
            "num_layers",
            "epochs",
            "batch_size",
            "sequence_length",
            "max_steps",
            "seed",
            "log_interval",
            "checkpoint_interval",
            "eval_batch_size",
            "workers",
            "patience",
            "lr_decay_start_epoch",
            "dropout",
            "lr_decay",
            "init_range",
            "learning_rate",
            "clip_norm",
            "optimizer",
            "tie_weights",
            "device",
        )
    }
    with _client(args) as client:
        job = client.start_training(args.corpus, name=args.name, request_id=args.request_id, **options)
        if args.watch:
            job = _follow(client, job.job_id, 0, args.json)
            if not args.json:
                _print_job(job)
            return 0 if job.state == "succeeded" else 1
    if args.json:
        print_json(job)
    else:
        _print_job(job)
    return 0


def _connect(client: SequenceClient, seconds: float) -> None:
    """Wait up to ``seconds`` for a connection to one of the client's addresses; UNAVAILABLE when none
    is made (a watch would otherwise keep reconnecting to a server that is not there)."""
    for channel in client._channels:
        try:
            grpc.channel_ready_future(channel).result(timeout=seconds)
            return
        except grpc.FutureTimeoutError:
            continue
    raise NnprobeError(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {client.address}")


def run_watch(args: argparse.Namespace) -> int:
    options = client_kwargs(args) | {"timeout": DEFAULT_TIMEOUT if args.timeout is None else args.timeout}
    with SequenceClient(args.address, **options) as client:
        _connect(client, min(5.0, args.timeout or 5.0))
        job = _follow(client, args.job_id, args.after, args.json, timeout=args.timeout)
    if not args.json:
        _print_job(job)
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs(states=args.state, limit=args.limit)
    if args.json:
        print_json(jobs)
    else:
        print_table(_job_rows(jobs), JOB_HEADERS)
    return 0


def run_job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job_id, history=args.history, plot=args.plot is not None)
    if args.plot is not None and job.plot_png:
        args.plot.write_bytes(job.plot_png)
    if args.json:
        print_json(job)
        return 0
    _print_job(job)
    if job.events:
        print_table(
            [
                [
                    e.sequence,
                    e.kind,
                    e.step,
                    e.loss,
                    e.perplexity,
                    _ppl(e.valid_perplexity),
                    e.state or e.message,
                ]
                for e in job.events
            ],
            ["seq", "kind", "step", "loss", "ppl", "valid ppl", "state"],
        )
    if args.plot is not None:
        print(f"curves saved to {args.plot}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job_id)
    print_json(job) if args.json else _print_job(job)
    return 0


def run_resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.resume_job(args.job_id)
        if args.watch:
            job = _follow(client, job.job_id, job.last_sequence, args.json)
    if not (args.watch and args.json):
        print_json(job) if args.json else _print_job(job)
    return 0
