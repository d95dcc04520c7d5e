"""``nnprobe lm upload|train|watch|jobs|job|cancel|resume|perplexity|sample|distance|nearest``
(SequenceService's LSTM language model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnprobe.cli.output import (
    ProgressBar,
    add_client_options,
    client_kwargs,
    print_fields,
    print_json,
    print_table,
)
from nnprobe.config import DEFAULT_TIMEOUT
from nnprobe.sequence import (
    JOB_STATES,
    METRICS,
    OPTIMIZERS,
    SPLITS,
    STRATEGIES,
    JobEvent,
    SequenceClient,
    TrainingJob,
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("lm", help="LSTM language model: training jobs, sampling (SequenceService)")
    commands = group.add_subparsers(dest="lm_command", required=True, metavar="COMMAND")

    p = commands.add_parser("upload", help="upload a corpus (text files, one sentence per line)")
    p.add_argument("train", type=Path)
    p.add_argument("--valid", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--name", default="")
    _finish(p, run_upload)

    p = commands.add_parser("train", help="start a training job (defaults: the course notebook's model)")
    p.add_argument("--corpus", default="ptb", help="ptb or an uploaded corpus id (default ptb)")
    p.add_argument("--name", default="")
    for flag, kind in (
        ("embed-size", int),
        ("hidden-size", int),
        ("num-layers", int),
        ("epochs", int),
        ("batch-size", int),
        ("sequence-length", int),
        ("max-steps", int),
        ("seed", int),
        ("log-interval", int),
        ("checkpoint-interval", int),
        ("eval-batch-size", int),
        ("workers", int),
        ("lr-decay-start-epoch", int),
        ("dropout", float),
        ("lr-decay", float),
        ("init-range", float),
    ):
        p.add_argument(f"--{flag}", type=kind, default=0)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--clip", "--clip-norm", dest="clip_norm", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--tie-weights", action="store_true")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: the server's)")
    p.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument(
        "--request-id",
        help="idempotency key (e.g. a UUID): running the command again with the same key and options "
        "returns the same job instead of starting another (default: a new UUID)",
    )
    _finish(p, run_train)

    p = commands.add_parser("watch", help="follow a job's events (again, from a cursor)")
    p.add_argument("job_id")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence number")
    _finish(p, run_watch)
    p.set_defaults(timeout=None)  # a watch follows the job until it stops, unless --timeout is given

    p = commands.add_parser("jobs", help="list training jobs")
    p.add_argument("--state", choices=JOB_STATES, nargs="*", default=[])
    p.add_argument("--limit", type=int, default=0)
    _finish(p, run_jobs)

    p = commands.add_parser("job", help="show one job; --plot saves its loss/perplexity curves")
    p.add_argument("job_id")
    p.add_argument("--history", action="store_true", help="print its events")
    p.add_argument("--plot", type=Path, help="save the curve PNG here")
    _finish(p, run_job)

    for name, helptext, handler in (
        ("cancel", "cancel a queued or running job", run_cancel),
        ("resume", "resume an interrupted or cancelled job from its checkpoint", run_resume),
    ):
        p = commands.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--watch", action="store_true")
        _finish(p, handler)

    p = commands.add_parser("perplexity", help="perplexity of a job's model on a split")
    p.add_argument("job_id")
    p.add_argument("--split", choices=SPLITS, default="valid")
    p.add_argument("--batch-size", type=int, default=0)
    _finish(p, run_perplexity)

    p = commands.add_parser("sample", help="generate words from a job's model")
    p.add_argument("job_id")
    p.add_argument("--prompt", default="")
    p.add_argument("--start-id", type=int, help="first word id (the notebook used 100)")
    p.add_argument("-n", "--num-words", type=int, default=50)
    p.add_argument("--strategy", choices=STRATEGIES, default="multinomial")
    p.add_argument("--greedy", action="store_true", help="same as --strategy greedy")
    p.add_argument("--temperature", type=float, help=">= 0; 0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most probable words (0: all)")
    p.add_argument("--top-p", type=float, help="nucleus probability in (0, 1] (default 1: all)")
    p.add_argument("--seed", type=int, default=0)
    _finish(p, run_sample)

    p = commands.add_parser("distance", help="embedding distance between two words")
    p.add_argument("word_a")
    p.add_argument("word_b")
    p.add_argument("--job", required=True, help="the job whose model to use")
    _finish(p, run_distance)

    p = commands.add_parser("nearest", help="nearest words by embedding")
    p.add_argument("word")
    p.add_argument("--job", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--metric", choices=METRICS, default="euclidean")
    _finish(p, run_nearest)


def _finish(parser: argparse.ArgumentParser, handler) -> None:
    add_client_options(parser, "sequence")
    parser.set_defaults(handler=handler)


def _client(args: argparse.Namespace) -> SequenceClient:
    return SequenceClient(args.address, **client_kwargs(args))


def _job_rows(jobs: list[TrainingJob]) -> list[list]:
    return [
        [
            j.job_id,
            j.state,
            j.corpus_id,
            f"{j.step}/{j.total_steps}",
            j.loss,
            _ppl(j.valid_perplexity),
            j.name,
        ]
        for j in jobs
    ]


JOB_HEADERS = ["job", "state", "corpus", "step", "loss", "valid ppl", "name"]


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
            ("corpus", job.corpus_id),
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
    for event in client.watch(job_id, after_sequence=after, timeout=timeout):
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


def run_watch(args: argparse.Namespace) -> int:
    options = client_kwargs(args) | {"timeout": DEFAULT_TIMEOUT if args.timeout is None else args.timeout}
    with SequenceClient(args.address, **options) as client:
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


def run_perplexity(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.evaluate_perplexity(args.job_id, split=args.split, batch_size=args.batch_size)
    if args.json:
        print_json(result)
    else:
        print_fields(
            [
                ("split", result.split),
                ("perplexity", result.perplexity),
                ("loss (nats)", result.loss),
                ("tokens", result.tokens),
                ("model step", result.step),
                ("seconds", result.seconds),
            ]
        )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.sample(
            args.job_id,
            prompt=args.prompt,
            start_word_id=args.start_id,
            num_words=args.num_words,
            strategy="greedy" if args.greedy else args.strategy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    if args.json:
        print_json(result)
    else:
        print(result.text.rstrip())
        print(f"\n(log-probability {result.log_probability:.2f}, model step {result.step})")
    return 0


def run_distance(args: argparse.Namespace) -> int:
    with _client(args) as client:
        d = client.distance(args.job, args.word_a, args.word_b)
    if args.json:
        print_json(d)
    else:
        print_fields(
            [
                ("words", f"{d.word_a} (id {d.id_a}), {d.word_b} (id {d.id_b})"),
                ("euclidean", d.euclidean),
                ("cosine similarity", d.cosine_similarity),
                ("cosine distance", d.cosine_distance),
                ("norms", f"{d.norm_a:.4f}, {d.norm_b:.4f}"),
                ("model step", d.step),
            ]
        )
    return 0


def run_nearest(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.nearest(args.job, args.word, k=args.k, metric=args.metric)
    if args.json:
        print_json(result)
    else:
        print(f"nearest to {result.word} (id {result.word_id}) by {result.metric} distance:")
        print_table([[w, i, d] for w, i, d in result.neighbors], ["word", "id", "distance"])
    return 0
