"""``nnprobe robustness``: robust accuracy of a model on a data set at each ε (EvaluateRobustness), with
a progress bar; ``nnprobe dataset upload`` (UploadDataset) and ``nnprobe robustness-job
show|watch|cancel|resume`` / ``nnprobe robustness-jobs`` (the job RPCs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnprobe.cli.attack import pixel_budget
from nnprobe.cli.output import add_client_options, client_kwargs, print_json, print_table
from nnprobe.cli.parsing import UsageError
from nnprobe.vision import RobustnessJob, RobustnessResult, VisionClient

SUFFIXES = (".png", ".jpg", ".jpeg")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("robustness", help="robust accuracy per ε (VisionService.EvaluateRobustness)")
    p.add_argument("model", help="model name (nnprobe models list; with --endpoint: the endpoint's)")
    p.add_argument("dataset", help="data set stored with nnprobe dataset upload")
    p.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="MODEL is served by this Open Inference Protocol server (Square only; labels: class indices)",
    )
    p.add_argument(
        "--eps", nargs="+", type=pixel_budget, required=True, help="budgets, e.g. 1/255 2/255 4/255"
    )
    p.add_argument("--attacks", nargs="+", default=["standard"], help="standard, pgd, or attack names")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-queries", type=int, default=0, help="Square's queries per image (0: 5000)")
    p.add_argument("--steps", type=int, default=0, help="iterations per gradient attack (0: defaults)")
    p.add_argument("--batch-size", type=int, default=0, help="images per unit of work (0: 64)")
    p.add_argument("--bisection", action="store_true", help="smallest breaking ε per broken image")
    p.add_argument("--model-version", type=int, default=0, help="repository version (default: the model's)")
    p.add_argument("--name", default="", help="a label for the job")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--save-plot", type=Path, help="write the accuracy-vs-ε PNG here")
    p.add_argument("--save-csv", type=Path, help="write per-image outcomes as CSV here")
    add_client_options(p, "vision")
    p.set_defaults(handler=run_robustness)

    d = subparsers.add_parser("dataset", help="labelled image data sets (VisionService.UploadDataset)")
    sub = d.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    u = sub.add_parser("upload", help="upload a local ImageFolder folder (<class>/<image>) or import one")
    u.add_argument("name", help="the data set's name")
    u.add_argument("folder", nargs="?", type=Path, help="local folder in ImageFolder layout")
    u.add_argument("--server-folder", default="", help="a folder under the server's datasets root instead")
    add_client_options(u, "vision")
    u.set_defaults(handler=run_upload)

    j = subparsers.add_parser("robustness-job", help="one robustness job: show, watch, cancel, resume")
    actions = j.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    for action in ("show", "watch", "cancel", "resume"):
        a = actions.add_parser(action, help=f"{action} a robustness job")
        a.add_argument("job_id")
        add_client_options(a, "vision")
        a.set_defaults(handler=run_job, action=action)

    ls = subparsers.add_parser("robustness-jobs", help="list robustness jobs (ListRobustnessJobs)")
    states = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
    ls.add_argument("--state", action="append", default=[], choices=states, help="only jobs in this state")
    ls.add_argument("--limit", type=int, default=0)
    add_client_options(ls, "vision")
    ls.set_defaults(handler=run_list)


def run_robustness(args: argparse.Namespace) -> int:
    attacks = args.attacks[0] if len(args.attacks) == 1 else args.attacks
    model, version, endpoint = args.model, args.model_version, None
    if args.endpoint is not None:  # MODEL (and --model-version) name the model on the endpoint
        endpoint = (args.endpoint, args.model, str(version) if version else "")
        model, version = None, 0
        if args.attacks == ["standard"]:
            attacks = "square"
    with VisionClient(args.address, **client_kwargs(args)) as client:
        job = client.evaluate_robustness(
            model,
            args.dataset,
            endpoint=endpoint,
            eps=args.eps,
            norm=args.norm,
            attacks=attacks,
            seed=args.seed,
            max_queries=args.max_queries,
            steps=args.steps,
            batch_size=args.batch_size,
            bisection=args.bisection,
            model_version=version,
            name=args.name,
        )
        if args.no_wait:
            _print_job(job.status(), args.json)
            return 0
        ended = job.watch(progress=not args.json, timeout=None)
    if ended.result is not None:
        if args.save_plot and ended.result.plot:
            args.save_plot.write_bytes(ended.result.plot)
        if args.save_csv:
            args.save_csv.write_text(ended.result.to_csv())
    _print_job(ended, args.json)
    return 0 if ended.state == "succeeded" else 1


def run_upload(args: argparse.Namespace) -> int:
    images: list[bytes] = []
    labels: list[str] = []
    if args.folder is not None:
        if args.server_folder:
            raise UsageError("give a local folder or --server-folder, not both")
        if not args.folder.is_dir():
            raise UsageError(f"folder not found: {args.folder}")
        for class_dir in sorted(p for p in args.folder.iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in SUFFIXES:
                    images.append(file.read_bytes())
                    labels.append(class_dir.name)
    elif not args.server_folder:
        raise UsageError("give a local folder or --server-folder")
    with VisionClient(args.address, **client_kwargs(args)) as client:
        info = client.upload_dataset(args.name, images, labels, server_folder=args.server_folder)
    if args.json:
        print_json(info, out=sys.stdout)
    else:
        print(f"stored {info.name}: {info.images} images, {len(info.labels)} labels, {info.bytes} bytes")
    return 0


def run_job(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        handle = client.robustness_job(args.job_id)
        if args.action == "watch":
            job = handle.watch(progress=not args.json, timeout=None)
        else:
            job = {"show": handle.status, "cancel": handle.cancel, "resume": handle.resume}[args.action]()
    _print_job(job, args.json)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        jobs = client.list_robustness_jobs(states=args.state, limit=args.limit)
    if args.json:
        print_json([_plain(job) for job in jobs], out=sys.stdout)
        return 0
    rows = [(j.job_id, j.name, j.state, j.model, j.dataset, f"{j.units_done}/{j.units_total}") for j in jobs]
    print_table(rows, ["job", "name", "state", "model", "dataset", "units"])
    return 0


def _plain(job: RobustnessJob) -> dict:
    body = {k: v for k, v in vars(job).items() if k not in ("raw", "result")}
    if job.result is not None:
        body["result"] = _plain_result(job.result)
    return body


def _plain_result(result: RobustnessResult) -> dict:
    import json

    return json.loads(result.to_json())


def _print_job(job: RobustnessJob, as_json: bool) -> None:
    if as_json:
        print_json(_plain(job), out=sys.stdout)
        return
    error = f": {job.error}" if job.error else ""
    print(f"job {job.job_id}: {job.state} ({job.units_done}/{job.units_total} units){error}")
    result = job.result
    if result is None:
        return
    print(f"clean accuracy {result.clean_accuracy:.1%} ({result.clean_correct}/{result.total})")
    rows = [
        (f"{e.epsilon * 255:g}/255", e.robust, f"{e.accuracy:.1%}", f"[{e.low:.1%}, {e.high:.1%}]")
        for e in result.per_epsilon
    ]
    print_table(rows, ["ε", "robust", "accuracy", "95% Wilson"])
    for warning in result.warnings:
        print(f"warning ({warning.kind}): {warning.message}")
