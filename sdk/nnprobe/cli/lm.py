"""``nnprobe lm upload|train|watch|jobs|job|cancel|resume|tensorboard|perplexity|sample|distance|nearest``
(SequenceService's LSTM language model).

This module builds the parsers; the commands live in :mod:`nnprobe.cli.lm_jobs` (corpora and training
jobs) and :mod:`nnprobe.cli.lm_queries` (questions put to a trained model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnprobe.cli.lm_jobs import (
    run_cancel,
    run_job,
    run_jobs,
    run_resume,
    run_train,
    run_upload,
    run_watch,
)
from nnprobe.cli.lm_queries import run_distance, run_nearest, run_perplexity, run_sample
from nnprobe.cli.lm_tensorboard import add_tensorboard, run_tensorboard
from nnprobe.cli.output import add_client_options
from nnprobe.cli.parsing import limit
from nnprobe.sequence import CHECKPOINTS, JOB_STATES, METRICS, OPTIMIZERS, SPLITS, STRATEGIES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("lm", help="LSTM language model: training jobs, sampling (SequenceService)")
    commands = group.add_subparsers(dest="lm_command", required=True, metavar="COMMAND")
    for add in (
        _add_upload,
        _add_train,
        _add_watch,
        _add_jobs,
        _add_job,
        _add_cancel_and_resume,
        lambda commands: _finish(add_tensorboard(commands), run_tensorboard),
        _add_perplexity,
        _add_sample,
        _add_distance,
        _add_nearest,
    ):
        add(commands)


def _finish(parser: argparse.ArgumentParser, handler) -> None:
    add_client_options(parser, "sequence")
    parser.set_defaults(handler=handler)


def _add_upload(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("upload", help="upload a corpus (text files, one sentence per line)")
    p.add_argument("train", type=Path)
    p.add_argument("--valid", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--name", default="")
    _finish(p, run_upload)


_TRAIN_NUMBERS = (
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
    ("patience", int),
    ("lr-decay-start-epoch", int),
    ("dropout", float),
    ("lr-decay", float),
    ("init-range", float),
)
"""Training options given as ``--flag N``, 0 meaning the server's default."""


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="start a training job (defaults: the course notebook's model)")
    p.add_argument("--corpus", default="ptb", help="ptb or an uploaded corpus id (default ptb)")
    p.add_argument("--name", default="")
    for flag, kind in _TRAIN_NUMBERS:
        action = p.add_argument(f"--{flag}", type=kind, default=0)
        if flag == "dropout":
            limit(action, high=1)
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


def _add_watch(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("watch", help="follow a job's events (again, from a cursor)")
    p.add_argument("job_id")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence number")
    _finish(p, run_watch)
    p.set_defaults(timeout=None)  # a watch follows the job until it stops, unless --timeout is given


def _add_jobs(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("jobs", help="list training jobs")
    p.add_argument("--state", choices=JOB_STATES, nargs="*", default=[])
    p.add_argument("--limit", type=int, default=0)
    _finish(p, run_jobs)


def _add_job(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("job", help="show one job; --plot saves its loss/perplexity curves")
    p.add_argument("job_id")
    p.add_argument("--history", action="store_true", help="print its events")
    p.add_argument("--plot", type=Path, help="save the curve PNG here")
    _finish(p, run_job)


def _add_cancel_and_resume(commands: argparse._SubParsersAction) -> None:
    for name, helptext, handler in (
        ("cancel", "cancel a queued or running job", run_cancel),
        ("resume", "resume an interrupted or cancelled job from its checkpoint", run_resume),
    ):
        p = commands.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--watch", action="store_true")
        _finish(p, handler)


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default="last",
        help="the job's last checkpoint (default) or its best-validation one",
    )


def _add_perplexity(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("perplexity", help="perplexity of a job's model on a split")
    p.add_argument("job_id")
    p.add_argument("--split", choices=SPLITS, default="valid")
    p.add_argument("--batch-size", type=int, default=0)
    _add_checkpoint(p)
    _finish(p, run_perplexity)


def _add_sample(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("sample", help="generate words from a job's model")
    p.add_argument("job_id")
    p.add_argument("--prompt", default="")
    p.add_argument("--start-id", type=int, help="first word id (the notebook used 100)")
    p.add_argument("-n", "--num-words", type=int, default=50)
    p.add_argument("--strategy", choices=STRATEGIES, default="multinomial")
    p.add_argument("--greedy", action="store_true", help="same as --strategy greedy")
    p.add_argument("--temperature", type=float, help=">= 0; 0 is greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most probable words (0: all)")
    limit(
        p.add_argument("--top-p", type=float, help="nucleus probability in (0, 1] (default 1: all)"),
        high=1,
        low_open=True,
    )
    p.add_argument("--seed", type=int, default=0)
    _add_checkpoint(p)
    _finish(p, run_sample)


def _add_distance(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("distance", help="embedding distance between two words")
    p.add_argument("word_a")
    p.add_argument("word_b")
    p.add_argument("--job", required=True, help="the job whose model to use")
    _add_checkpoint(p)
    _finish(p, run_distance)


def _add_nearest(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("nearest", help="nearest words by embedding")
    p.add_argument("word")
    p.add_argument("--job", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--metric", choices=METRICS, default="euclidean")
    _add_checkpoint(p)
    _finish(p, run_nearest)
