"""Validation of a training request on plain values: the fields a client set (``TrainingConfig`` field
name -> value, unset fields absent) become a complete ``TrainingConfig`` and the device to train on.

Errors name the field as ``config.<name>``: ``InvalidArgument`` (out of range, inconsistent),
``ResourceExhausted`` (over ``max_tensor_elements``), ``FailedPrecondition`` (workers this server cannot
run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from nnprobe_services import validation as valid
from nnprobe_services.device import resolve_device
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.lm.corpus import Corpus
from nnprobe_services.sequence.lm.evaluation import check_streams
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import steps_per_epoch

DEFAULT_LR = {"adam": 0.002, "sgd": 20.0}
#: The sizes' defaults (the course notebook's), taken for an unset or zero value.
SIZE_DEFAULTS = {
    "embed_size": 128,
    "hidden_size": 1024,
    "num_layers": 1,
    "epochs": 5,
    "batch_size": 20,
    "sequence_length": 30,
    "log_interval": 10,
    "checkpoint_interval": 200,
    "eval_batch_size": 10,
}
#: The sizes' largest values (absent: ``max_tensor_elements``; None: no limit).
_SIZE_MAXIMA: dict[str, int | None] = {
    "num_layers": 64,
    "epochs": 100_000,
    "log_interval": None,
    "checkpoint_interval": None,
}
#: Longest idempotency key (``request_id``) StartTraining accepts, in characters.
MAX_REQUEST_ID_LENGTH = 128
#: Most data-parallel worker processes one job may use.
MAX_WORKERS = 64
F = "config."


def training_config(
    given: Mapping[str, Any],
    corpus: Corpus,
    *,
    limit: int,
    device: torch.device,
    parallel: bool = True,
) -> tuple[TrainingConfig, torch.device]:
    """The full configuration for ``given`` (defaults for what is absent) and its device.

    ``limit``: max_tensor_elements (parameters and activations); ``device``: the server's;
    ``parallel``: whether this server runs data-parallel jobs (``workers`` > 1).
    """
    optimizer = given.get("optimizer", "adam")
    sizes = _sizes(given, limit)
    lr = given.get("learning_rate", DEFAULT_LR[optimizer])
    if not math.isfinite(lr) or lr <= 0:
        raise InvalidArgument(f"must be a finite number > 0, got {lr}", field=F + "learning_rate")
    clip = given.get("clip_norm", 0.5)
    if not math.isfinite(clip) or clip < 0:
        raise InvalidArgument(
            f"must be a finite number >= 0 (0: no clipping), got {clip}", field=F + "clip_norm"
        )
    _check_schedule(given, sizes)
    workers = valid.positive(given.get("workers", 0), F + "workers", default=1, maximum=MAX_WORKERS)
    batch = sizes["batch_size"]
    if batch % workers:
        raise InvalidArgument(
            f"{workers} workers must divide batch_size {batch} (each takes batch_size / workers streams)",
            field=F + "workers",
        )
    if workers > 1 and not parallel:
        raise FailedPrecondition("this server does not run data-parallel jobs", field=F + "workers")
    if given.get("device"):
        try:
            device = resolve_device(given["device"])
        except (ValueError, RuntimeError) as error:
            raise InvalidArgument(str(error), field=F + "device") from None
    if workers > 1:
        check_workers_fit(workers, device, F + "workers")
    _check_corpus_fits(corpus, sizes, limit)
    patience = _patience(given, corpus)
    config = TrainingConfig(
        **sizes,
        learning_rate=lr,
        clip_norm=clip,
        optimizer=optimizer,
        dropout=given.get("dropout", 0.0),
        tie_weights=given.get("tie_weights", False),
        max_steps=given.get("max_steps", 0),
        seed=given.get("seed", 0),
        device=str(device),
        lr_decay=given.get("lr_decay", 0.0) or 1.0,
        lr_decay_start_epoch=given.get("lr_decay_start_epoch", 0),
        init_range=given.get("init_range", 0.0),
        workers=workers,
        patience=patience,
    )
    return config, device


def _patience(given: Mapping[str, Any], corpus: Corpus) -> int:
    """Early stopping's patience: >= 0 (0: off); > 0 needs a valid split to watch."""
    patience = given.get("patience", 0)
    if patience < 0:
        raise InvalidArgument(
            f"must be >= 0 (evaluations without improvement before stopping; 0: off), got {patience}",
            field=F + "patience",
        )
    if patience and "valid" not in corpus.splits:
        raise FailedPrecondition(
            f"early stopping watches validation perplexity, and corpus {corpus.corpus_id} has no valid "
            "split; upload one or set patience to 0",
            field=F + "patience",
        )
    return int(patience)


def _sizes(given: Mapping[str, Any], limit: int) -> dict[str, int]:
    return {
        name: valid.positive(
            given.get(name, 0), F + name, default=default, maximum=_SIZE_MAXIMA.get(name, limit)
        )
        for name, default in SIZE_DEFAULTS.items()
    }


def canonical_config(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (as ``training_config`` takes it) with every default that does not depend on the server
    or the corpus filled in, and -0.0 as 0.0: two requests that ask for the same training have the same
    canonical config (an optimizer, learning rate or size given at its default, or left out). Values are
    not validated; ``device`` stays as given ('' is the server's)."""
    optimizer = given.get("optimizer", "adam")
    values: dict[str, Any] = {name: given.get(name, 0) or default for name, default in SIZE_DEFAULTS.items()}
    values.update(
        optimizer=optimizer,
        learning_rate=given.get("learning_rate", DEFAULT_LR.get(optimizer)),
        clip_norm=given.get("clip_norm", 0.5),
        dropout=given.get("dropout", 0.0),
        tie_weights=given.get("tie_weights", False),
        max_steps=given.get("max_steps", 0),
        seed=given.get("seed", 0),
        device=given.get("device", ""),
        lr_decay=given.get("lr_decay", 0.0) or 1.0,
        lr_decay_start_epoch=given.get("lr_decay_start_epoch", 0),
        init_range=given.get("init_range", 0.0),
        workers=given.get("workers", 0) or 1,
    )
    if given.get("patience", 0):  # absent when off: the digests of requests from before it existed hold
        values["patience"] = given["patience"]
    return {k: v + 0.0 if isinstance(v, float) else v for k, v in values.items()}


def _check_schedule(given: Mapping[str, Any], sizes: dict[str, int]) -> None:
    dropout = given.get("dropout", 0.0)
    if not 0 <= dropout < 1:
        raise InvalidArgument(f"must be in [0, 1), got {dropout}", field=F + "dropout")
    if given.get("tie_weights") and sizes["embed_size"] != sizes["hidden_size"]:
        raise InvalidArgument(
            f"needs embed_size == hidden_size, got {sizes['embed_size']} and {sizes['hidden_size']}",
            field=F + "tie_weights",
        )
    if given.get("max_steps", 0) < 0:
        raise InvalidArgument(f"must be >= 0 (0: no limit), got {given['max_steps']}", field=F + "max_steps")
    decay = given.get("lr_decay", 0.0)
    if not 0 < (decay or 1.0) <= 1:
        raise InvalidArgument(f"must be in (0, 1] (0 means 1), got {decay}", field=F + "lr_decay")
    if given.get("lr_decay_start_epoch", 0) < 0:
        raise InvalidArgument(
            f"must be >= 0, got {given['lr_decay_start_epoch']}", field=F + "lr_decay_start_epoch"
        )
    init_range = given.get("init_range", 0.0)
    if not math.isfinite(init_range) or init_range < 0:
        raise InvalidArgument(f"must be a finite number >= 0, got {init_range}", field=F + "init_range")


def _check_corpus_fits(corpus: Corpus, sizes: dict[str, int], limit: int) -> None:
    batch, length, eval_batch = sizes["batch_size"], sizes["sequence_length"], sizes["eval_batch_size"]
    train = corpus.splits["train"].tokens
    if steps_per_epoch(train, batch, length) < 1:
        raise InvalidArgument(
            f"batch_size x (sequence_length + 1) = {batch} x {length + 1} needs more than the "
            f"{train} tokens of corpus {corpus.corpus_id}'s train split",
            field=F + "batch_size",
        )
    for name in ("valid", "test"):
        if name in corpus.splits:
            check_streams(corpus.splits[name].tokens, eval_batch, F + "eval_batch_size", name)
    vocab, embed, hidden, layers = (
        corpus.vocab_size,
        sizes["embed_size"],
        sizes["hidden_size"],
        sizes["num_layers"],
    )
    parameters = vocab * embed + layers * 4 * hidden * (embed + hidden + 2) + vocab * (hidden + 1)
    if parameters > limit:
        raise ResourceExhausted(
            f"the model would have {parameters} parameters; the limit is {limit} (max_tensor_elements)",
            field=F + "hidden_size",
        )
    activations = batch * length * max(vocab, 4 * hidden)
    if activations > limit:
        raise ResourceExhausted(
            f"batch x sequence x max(vocab, 4 hidden) = {activations} activation elements exceed {limit}",
            field=F + "batch_size",
        )


def request_id(value: str) -> str:
    """StartTraining's idempotency key: '' (none) or 1 to ``MAX_REQUEST_ID_LENGTH`` printable ASCII
    characters without spaces (``!`` to ``~``), such as a UUID. Returns it unchanged; ``InvalidArgument``
    naming ``request_id`` otherwise."""
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument(
            f"must be at most {MAX_REQUEST_ID_LENGTH} characters (a UUID has 36), got {len(value)}",
            field="request_id",
        )
    for index, char in enumerate(value):
        if not "!" <= char <= "~":
            raise InvalidArgument(
                f"must be printable ASCII without spaces ('!' to '~'), such as a UUID; character {index} is "
                f"{char!r}",
                field="request_id",
            )
    return value


def check_workers_fit(workers: int, device: torch.device, field: str) -> None:
    """Data-parallel workers run on the CPU (gloo) or one GPU each (NCCL); FailedPrecondition otherwise."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        first = device.index or 0
        if first + workers > count:
            raise FailedPrecondition(
                f"{workers} workers need one GPU each from {device}, and this server has {count}", field=field
            )
    elif device.type != "cpu":
        raise FailedPrecondition(f"data-parallel workers run on cpu or cuda, not {device}", field=field)


__all__ = [
    "DEFAULT_LR",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_WORKERS",
    "SIZE_DEFAULTS",
    "canonical_config",
    "check_workers_fit",
    "request_id",
    "training_config",
]
