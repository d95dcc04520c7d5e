"""``nnprobe lm tensorboard JOB --out DIR``: save a training job's TensorBoard files into a folder, for
``tensorboard --logdir DIR``."""

from __future__ import annotations

import argparse

from nnprobe.cli.output import client_kwargs, print_fields, print_json
from nnprobe.sequence import SequenceClient


def add_tensorboard(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = commands.add_parser(
        "tensorboard",
        help="save a job's TensorBoard files (loss, perplexity, learning rate, gradient norm) into a folder",
    )
    p.add_argument("job_id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if missing)")
    return p


def run_tensorboard(args: argparse.Namespace) -> int:
    with SequenceClient(args.address, **client_kwargs(args)) as client:
        logs = client.download_tensorboard(args.job_id, args.out)
    if args.json:
        print_json(
            {"job_id": logs.job_id, "out_dir": str(logs.out_dir), "files": [str(p) for p in logs.files]}
        )
    else:
        print_fields(
            [
                ("job", logs.job_id),
                ("files", len(logs.files)),
                ("bytes", logs.total_bytes),
                ("view", f"tensorboard --logdir {logs.out_dir}"),
            ]
        )
    return 0
