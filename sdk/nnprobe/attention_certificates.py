"""Symmetry certificates of a repository token model: the request fields of ``check_permutation_equivariance``
and ``check_pooling_invariance`` called with ``model=``, and the certificate they answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nnprobe import tensors
from nnprobe.display import rich_result

#: Arguments that describe a built attention layer and their defaults: refused together with ``model``.
LAYER_DEFAULTS: dict[str, Any] = {
    "sequence_length": 0,
    "model_dim": 0,
    "weights": None,
    "heads": 1,
    "scale": None,
    "softmax": "row",
    "positional_encoding": None,
    "causal_mask": False,
    "dtype": None,
}


@rich_result()
@dataclass
class BreakingNode:
    """The first node of the model's graph whose output stops commuting with the permutation.

    ``name`` (``add``), ``op`` (``call_function``, ``call_module``...), ``target`` (``aten.add.Tensor``,
    ``getitem``...), ``deviation``: max-norm distance of its float64 output under PX from the nearest
    commuting answer; ``tolerance``: the absolute tolerance it exceeded; ``shape``: its output's shape.
    """

    name: str
    op: str
    target: str
    deviation: float
    tolerance: float
    shape: list[int]


@rich_result()
@dataclass
class SymmetryCertificate:
    """The deviation of a token model (``model``, ``model_version``) judged against its own noise.

    ``ratio`` = ``deviation`` / max(``noise``, ``noise_floor``); the check holds when it is <= ``threshold``.
    ``noise``: max |f32(X) - f64(X)| (the model loaded in float32, the served precision, and in float64);
    ``noise_floor``: 2^-23 * max |f64(X)|. ``deviation``: max over permutations of |f32(PX) - P f32(X)|
    (equivariance) or |f32(PX) - f32(X)| (invariance); ``deviation_float64``: the same in float64, about
    1e-15 * max |f| for an exactly symmetric model. ``first_breaking_node``: where the symmetry breaks, when
    the check fails and a node breaks in float64.
    """

    model: str
    model_version: int
    ratio: float
    threshold: float
    noise: float
    noise_floor: float
    deviation: float
    deviation_float64: float
    first_breaking_node: BreakingNode | None
    input_shape: list[int]
    raw: Any = field(repr=False, default=None)


def certificate(response: Any) -> SymmetryCertificate | None:
    """The ``certificate`` of a Check* response, or None when the check was of a built layer."""
    if not response.HasField("certificate"):
        return None
    c = response.certificate
    node = c.first_breaking_node
    breaking = (
        BreakingNode(node.name, node.op, node.target, node.deviation, node.tolerance, list(node.shape))
        if c.HasField("first_breaking_node")
        else None
    )
    return SymmetryCertificate(
        ratio=c.ratio,
        threshold=c.threshold,
        noise=c.noise,
        noise_floor=c.noise_floor,
        deviation=c.deviation,
        deviation_float64=c.deviation_float64,
        first_breaking_node=breaking,
        model=c.model,
        model_version=c.model_version,
        input_shape=list(c.input_shape),
        raw=c,
    )


def model_fields(arguments: dict[str, Any]) -> dict[str, Any] | None:
    """Pop ``model``, ``model_version`` and ``noise_ratio_threshold`` from a check's ``arguments``; with a
    model, the request fields that name it (``x`` (B, T, D) and ``seed`` go with it), else None.

    Raises ``ValueError`` for a version or threshold without a model, and for arguments of a built
    attention layer given with one."""
    model = arguments.pop("model")
    version = arguments.pop("model_version")
    threshold = arguments.pop("noise_ratio_threshold")
    if not model:
        if version or threshold is not None:
            raise ValueError("model_version and noise_ratio_threshold go with model=")
        return None
    layered = [k for k, default in LAYER_DEFAULTS.items() if arguments.get(k, default) != default]
    if layered:
        raise ValueError(f"{', '.join(layered)} describe a built attention layer; leave them out with model=")
    fields: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "seed": arguments["seed"],
        "noise_ratio_threshold": threshold,
    }
    if arguments.get("x") is not None:
        fields["x"] = tensors.to_tensor(arguments["x"])
    return fields
