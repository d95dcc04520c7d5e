"""``nnprobe rnn models [list|upload|delete]`` and ``nnprobe attention models [list|upload|delete]``: the
model repository of SequenceService and AttentionService (ListModels, UploadModel, DeleteModel), named as
``nnprobe models`` names VisionService's."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nnprobe.cli.output import ProgressBar, add_client_options, client_kwargs, print_json, print_table
from nnprobe.progress import Progress
from nnprobe.repository_models import RepositoryModel


def add_model_commands(commands: argparse._SubParsersAction, service: str, client: type, tasks: str) -> None:
    """Add ``models`` (list, upload, delete) under ``commands`` for ``service``'s client class ``client``."""
    p = commands.add_parser("models", help=f"the model repository of your own {tasks} models")
    add_client_options(p, service)
    p.set_defaults(handler=run_list, client=client)
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")

    q = actions.add_parser("list", help="every model with its task, shapes and versions (ListModels)")
    add_client_options(q, service)
    q.set_defaults(handler=run_list, client=client)

    q = actions.add_parser("upload", help="add a model.onnx or model.pt2 to the repository (UploadModel)")
    q.add_argument("file", help="an ONNX model (.onnx) or a torch.export archive (.pt2)")
    q.add_argument("--name", required=True, help="model name (letters, digits, _ . -)")
    q.add_argument("--config", help=f"the model's config.yaml ({tasks}; required for a new model)")
    q.add_argument("--version", type=int, default=0, help="version to create (default: the next)")
    q.add_argument("--format", choices=("onnx", "pt2"), help="file format (default: from the suffix)")
    add_client_options(q, service)
    q.set_defaults(handler=run_upload, client=client)

    q = actions.add_parser("delete", help="remove a repository model or one version (DeleteModel)")
    q.add_argument("name", help="model name")
    q.add_argument("--version", type=int, default=0, help="version to remove (default: the whole model)")
    add_client_options(q, service)
    q.set_defaults(handler=run_delete, client=client)


def _shapes(m: RepositoryModel) -> str:
    """The declared shapes in words: ``x (3) h,c (5)``, ``(T, 3) -> (T, 4)``, ``(T, 8) -> (8)``."""
    given = f"ids<{m.vocabulary}" if m.vocabulary else str(m.input_size or m.hidden_size)
    if m.task == "recurrent_cell":
        return f"x ({given}), {'h,c' if m.states == 2 else 'h'} ({m.hidden_size})"
    return f"(T, {given}) -> " + (f"({m.hidden_size})" if m.pooled else f"(T, {m.hidden_size})")


def run_list(args: argparse.Namespace) -> int:
    with args.client(args.address, **client_kwargs(args)) as client:
        models = client.list_models()
    if args.json:
        print_json(models, out=sys.stdout)
        return 0
    rows: list[tuple[Any, ...]] = [
        (
            m.name,
            m.task or f"broken: {m.problem}",
            _shapes(m) if m.task else "-",
            ",".join(str(v.version) for v in m.versions) or "-",
            m.default_version or "-",
            m.versions[-1].sha256[:12] if m.versions else "-",
        )
        for m in models
    ]
    print_table(rows, ["model", "task", "shapes", "versions", "default", "sha256"], out=sys.stdout)
    return 0


def upload_with_progress(client: Any, args: argparse.Namespace, **fields: Any) -> Any:
    """``client.upload_model(args.file, name=args.name, config=args.config, version=args.version,
    format=args.format, **fields)`` with a progress bar of the bytes sent (any service's client)."""
    bar: ProgressBar | None = None

    def progress(update: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar(update.total, f"upload {args.name}")
        bar.update(update.done, f"{update.done / 1e6:.1f} MB")

    try:
        return client.upload_model(
            args.file,
            name=args.name,
            config=args.config,
            version=args.version,
            format=args.format,
            on_progress=progress,
            progress=False,
            **fields,
        )
    finally:
        if bar is not None:
            bar.close()


def run_upload(args: argparse.Namespace) -> int:
    with args.client(args.address, **client_kwargs(args)) as client:
        result = upload_with_progress(client, args)
    if args.json:
        print_json(result, out=sys.stdout)
        return 0
    m = result.model
    print(
        f"{m.name} version {result.version} ({m.task}: {_shapes(m)}), sha256 {result.sha256[:12]}, "
        f"{result.seconds:.2f}s"
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with args.client(args.address, **client_kwargs(args)) as client:
        removed = client.delete_model(args.name, version=args.version)
    if args.json:
        print_json({"name": args.name, "removed_versions": removed}, out=sys.stdout)
        return 0
    print(f"{args.name}: removed version(s) {', '.join(map(str, removed))}")
    return 0
