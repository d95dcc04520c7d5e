"""``nnprobe models [list|upload|delete]``: the classifiers a vision server serves and its model repository
(VisionService.ListModels, UploadModel, DeleteModel)."""

from __future__ import annotations

import argparse
import sys

from nnprobe.cli.output import add_client_options, client_kwargs, print_json, print_table
from nnprobe.cli.repository_models import upload_with_progress
from nnprobe.vision import VisionClient


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="classifiers the server serves; its model repository")
    add_client_options(p, "vision")
    p.set_defaults(handler=run_list)
    actions = p.add_subparsers(dest="models_command", metavar="ACTION")

    q = actions.add_parser("list", help="every model with backend, state and versions (ListModels)")
    add_client_options(q, "vision")
    q.set_defaults(handler=run_list)

    q = actions.add_parser("upload", help="add a model.onnx or model.pt2 to the repository (UploadModel)")
    q.add_argument("file", help="an ONNX model (.onnx) or a torch.export archive (.pt2)")
    q.add_argument("--name", required=True, help="model name (letters, digits, _ . -)")
    q.add_argument("--config", help="the model's config.yaml (required for a new model)")
    q.add_argument("--labels", help="class names, one per line")
    q.add_argument("--version", type=int, default=0, help="version to create (default: the next)")
    q.add_argument("--format", choices=("onnx", "pt2"), help="file format (default: from the suffix)")
    add_client_options(q, "vision")
    q.set_defaults(handler=run_upload)

    q = actions.add_parser("delete", help="remove a repository model or one version (DeleteModel)")
    q.add_argument("name", help="model name")
    q.add_argument("--version", type=int, default=0, help="version to remove (default: the whole model)")
    add_client_options(q, "vision")
    q.set_defaults(handler=run_delete)


def run_list(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        models = client.list_models()
    if args.json:
        print_json(models, out=sys.stdout)
        return 0
    rows = []
    for m in models:
        p = m.preprocessing
        versions = ",".join(str(v.version) for v in m.versions) or "-"
        rows.append(
            (
                m.name + (" (default)" if m.is_default else ""),
                m.backend,
                m.device,
                m.state + (f": {m.state_message}" if m.state_message else ""),
                f"{p.crop[0]}x{p.crop[1]} {m.channel_order}",
                m.num_classes or "-",
                m.num_labels,
                versions,
                m.version[:12] or "-",
            )
        )
    headers = ["model", "backend", "device", "state", "input", "classes", "labels", "versions", "sha256"]
    print_table(rows, headers, out=sys.stdout)
    missing = [m for m in models if not m.weights_present and not m.in_repository]
    if missing:
        print(f"\nmissing weights are looked for in: {', '.join(missing[0].searched)}")
    return 0


def run_upload(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        result = upload_with_progress(client, args, labels=args.labels)
    if args.json:
        print_json(result, out=sys.stdout)
        return 0
    m = result.model
    print(
        f"{m.name} version {result.version} ({m.backend} on {m.device}, {m.num_classes} classes), "
        f"sha256 {result.sha256[:12]}, {result.seconds:.2f}s"
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        removed = client.delete_model(args.name, version=args.version)
    if args.json:
        print_json({"name": args.name, "removed_versions": removed}, out=sys.stdout)
        return 0
    print(f"{args.name}: removed version(s) {', '.join(map(str, removed))}")
    return 0
