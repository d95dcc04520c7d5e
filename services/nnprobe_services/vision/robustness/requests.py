"""A robustness job's request as plain values: checked once when the job is created, stored with the job
(``to_dict``) and read back by the replica that runs it (``from_dict``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.vision.robustness.apgd import ApgdSettings
from nnprobe_services.vision.robustness.datasets import check_name
from nnprobe_services.vision.robustness.ensemble import AttackSettings, resolve
from nnprobe_services.vision.robustness.fab import FabSettings
from nnprobe_services.vision.robustness.pgd import PgdSettings
from nnprobe_services.vision.robustness.remote import address_problem
from nnprobe_services.vision.robustness.square import SquareSettings

#: Bisection steps per broken image when a request asks for bisection.
BISECTION_STEPS = 8
NORMS = ("linf", "l2")
#: Most ε one job evaluates (each is a full pass over the data set).
MAX_EPSILONS = 64
#: Most Square queries per image and restart (AutoAttack's standard is 5000, the Square paper's 10,000).
MAX_QUERIES = 100_000


@dataclass(frozen=True)
class EvaluationRequest:
    """``model`` (name) at repository ``version`` (None: its default) on data set ``dataset``; ``epsilons``
    (pixel units, increasing) in ``norm``; ``attacks`` (names, in order); ``max_queries``/``steps`` 0 keep
    each attack's default; ``batch_size`` images per unit of work. ``remote_address`` (host:port, empty:
    a local model), ``remote_model`` and ``remote_version`` name a model on an Open Inference Protocol
    endpoint instead of ``model`` (which is then empty)."""

    model: str
    dataset: str
    epsilons: tuple[float, ...]
    norm: str = "linf"
    attacks: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
    seed: int = 0
    max_queries: int = 0
    bisection: bool = False
    steps: int = 0
    batch_size: int = 64
    version: int | None = None
    name: str = ""
    remote_address: str = ""
    remote_model: str = ""
    remote_version: str = ""

    @property
    def is_remote(self) -> bool:
        return bool(self.remote_address or self.remote_model or self.remote_version)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epsilons": list(self.epsilons), "attacks": list(self.attacks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationRequest:
        """The request of ``to_dict`` (other keys a job stores beside it are left out)."""
        known = {f.name for f in fields(cls)}
        plain = {k: v for k, v in data.items() if k in known}
        return cls(**{**plain, "epsilons": tuple(data["epsilons"]), "attacks": tuple(data["attacks"])})

    def settings(self) -> AttackSettings:
        """The attacks' settings: defaults, with ``steps`` and ``max_queries`` where given."""
        apgd, fab, pgd, square = ApgdSettings(), FabSettings(), PgdSettings(), SquareSettings()
        if self.steps:
            apgd, fab, pgd = (
                replace(apgd, steps=self.steps),
                replace(fab, steps=self.steps),
                PgdSettings(self.steps),
            )
        if self.max_queries:
            square = replace(square, queries=self.max_queries)
        return AttackSettings(apgd=apgd, fab=fab, square=square, pgd=pgd)

    @property
    def bisection_steps(self) -> int:
        return BISECTION_STEPS if self.bisection else 0


def checked(request: EvaluationRequest, max_steps: int) -> EvaluationRequest:
    """``request`` with its attacks resolved to names, after checking every field (``InvalidArgument``
    naming it; ``ResourceExhausted`` on ``epsilons`` for more than ``MAX_EPSILONS``). ``max_steps``: the
    most iterations (``steps``) one attack may run."""
    if request.is_remote:
        _check_remote(request)
    elif not request.model.strip():
        raise InvalidArgument("name a model (ListModels lists them)", field="model")
    check_name(request.dataset, "dataset")
    _check_epsilons(request.epsilons, request.norm)
    if request.norm not in NORMS:
        raise InvalidArgument(f"choose one of {', '.join(NORMS)}", field="norm")
    try:
        attacks = resolve(list(request.attacks) if len(request.attacks) != 1 else request.attacks[0])
    except ValueError as error:
        raise InvalidArgument(str(error), field="attacks") from None
    if request.is_remote and attacks != ("square",):
        others = ", ".join(a for a in attacks if a != "square")
        raise FailedPrecondition(
            f"a remote model is a black box: {others} need gradients; the black-box attack works: "
            'attacks=["square"]',
            field="attacks",
        )
    if not 0 <= request.max_queries <= MAX_QUERIES:
        raise InvalidArgument(
            f"must be in 0..{MAX_QUERIES} (0: 5000), got {request.max_queries}", field="max_queries"
        )
    if not 0 <= request.steps <= max_steps:
        raise InvalidArgument(f"must be in 0..{max_steps} (vision.max_attack_steps)", field="steps")
    if not 1 <= request.batch_size <= 1024:
        raise InvalidArgument(f"must be in 1..1024 (0: 64), got {request.batch_size}", field="batch_size")
    return replace(request, attacks=attacks)


def _check_epsilons(eps: tuple[float, ...], norm: str) -> None:
    """``InvalidArgument`` naming ``epsilons`` or ``epsilons[i]``, ``ResourceExhausted`` for too many."""
    if not eps:
        raise InvalidArgument("give at least one ε (pixel units, e.g. 4/255 = 0.0157)", field="epsilons")
    if len(eps) > MAX_EPSILONS:
        raise ResourceExhausted(
            f"{len(eps)} ε given; at most {MAX_EPSILONS} per job (split the list over several jobs)",
            field="epsilons",
        )
    for i, value in enumerate(eps):
        if not math.isfinite(value) or value <= 0:
            raise InvalidArgument(f"must be a positive number, got {value}", field=f"epsilons[{i}]")
        if i and value <= eps[i - 1]:
            raise InvalidArgument("give the ε in strictly increasing order", field=f"epsilons[{i}]")
    if norm == "linf" and eps[-1] > 1:
        raise InvalidArgument(f"an L-infinity ε is at most 1 (pixel units), got {eps[-1]}", field="epsilons")


def _check_remote(request: EvaluationRequest) -> None:
    """``InvalidArgument`` naming ``model`` (given beside a remote model), ``remote.address`` (not a
    host:port address, as transfer addresses are checked) or ``remote.model_name`` (empty)."""
    if request.model.strip():
        raise InvalidArgument("give either model or remote, not both", field="model")
    problem = address_problem(request.remote_address)
    if problem:
        raise InvalidArgument(f"{problem} (the endpoint's host:port)", field="remote.address")
    if not request.remote_model.strip():
        raise InvalidArgument("name the model on the endpoint", field="remote.model_name")
    if len(request.remote_model) > 255 or len(request.remote_version) > 64:
        raise InvalidArgument("at most 255 characters (version: 64)", field="remote.model_name")
