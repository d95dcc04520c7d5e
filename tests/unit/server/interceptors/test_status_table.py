"""The one table from domain errors to status codes: every ``ServiceError`` subclass defined anywhere in
nnprobe_services ends a request with the code its docstring names (never INTERNAL or UNKNOWN), its message
fits in the trailers, and its field travels as a ``google.rpc.BadRequest`` detail. Exceptions that could
end a request all sit in the hierarchy."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from pathlib import Path

import grpc
import nnprobe_services
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition, ResourceExhausted, ServiceError
from nnprobe_services.server.interceptors.status import (
    MAX_DETAIL_BYTES,
    MAX_FIELD_BYTES,
    error_status,
    shorten,
    status_code,
)

#: Exceptions of nnprobe_services that never end a request, with the place that handles them instead.
HANDLED_INSIDE = {
    "nnprobe_services.sequence.jobs.records.LeaseLost": "the replica stops running a job another one claimed",
    "nnprobe_services.sequence.lm.supervisor.WorkerFailed": "the training job fails with the worker's log",
    "nnprobe_services.sequence.lm.checkpoints.WriteFailed": "the training job fails with the write's cause",
    "nnprobe_services.vision.receptive_fields.arithmetic.FieldError": (
        "the receptive-field workflow translates it"
    ),
}

_CODE_NAMES = {code.name for code in grpc.StatusCode}
_CODE_WORD = re.compile(r"\b[A-Z][A-Z_]+\b")


@functools.cache
def _exceptions() -> tuple[type[BaseException], ...]:
    """Every exception class defined in nnprobe_services (each module imported; ``__main__`` modules
    start a server, so they are left out)."""
    for info in pkgutil.walk_packages(nnprobe_services.__path__, "nnprobe_services."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(info.name)
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [BaseException]
    while todo:
        for cls in todo.pop().__subclasses__():
            if cls not in found:
                found.add(cls)
                todo.append(cls)
    ours = (cls for cls in found if cls.__module__.split(".")[0] == "nnprobe_services")
    return tuple(sorted(ours, key=_name))


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _domain_errors() -> list[type[ServiceError]]:
    """Every ``ServiceError`` subclass but the family bases."""
    family = _family_bases()
    return [cls for cls in _exceptions() if issubclass(cls, ServiceError) and cls not in family]


def _family_bases() -> set[type[ServiceError]]:
    """``ServiceError`` and the bases of a feature's errors that name no status of their own (each subclass
    names one, as the receptive fields' ``FieldError``): they are never raised themselves."""
    bases = {
        cls
        for cls in _exceptions()
        if issubclass(cls, ServiceError) and cls.__subclasses__() and _documented_code(cls) is None
    }
    return bases | {ServiceError}


def _documented_code(cls: type[ServiceError]) -> grpc.StatusCode | None:
    """The first status code named in the docstring of ``cls`` or, failing that, its nearest base's."""
    for base in cls.__mro__:
        for word in _CODE_WORD.findall(base.__dict__.get("__doc__") or ""):
            if word in _CODE_NAMES:
                return grpc.StatusCode[word]
    return None


def _make(cls: type[ServiceError], message: str, field: str) -> ServiceError:
    try:
        return cls(message, field=field)
    except TypeError:  # a constructor with other parameters: set what the status reads
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.message, error.field = message, field
        return error


def _field_violations(status: grpc.Status) -> list[error_details_pb2.BadRequest.FieldViolation]:
    (details,) = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    violations = []
    for detail in status_pb2.Status.FromString(details).details:
        request = error_details_pb2.BadRequest()
        assert detail.Unpack(request)
        violations.extend(request.field_violations)
    return violations


def test_the_walk_finds_the_domain_errors() -> None:
    names = {cls.__name__ for cls in _domain_errors()}
    assert {"InvalidArgument", "Cancelled", "QueueFull", "WeightsMissing", "TracerUnavailable"} <= names


@settings(max_examples=60, deadline=None)
@given(message=st.text(max_size=1500), field=st.text(min_size=1, max_size=400))
def test_every_domain_error_ends_with_its_documented_status(message: str, field: str) -> None:
    for cls in _domain_errors():
        documented = _documented_code(cls)
        assert documented is not None, f"{_name(cls)} names no status code in its docstring or its bases'"
        error = _make(cls, message, field)
        code = status_code(error)
        assert code == documented, _name(cls)
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), _name(cls)
        status = error_status(error)
        assert status.code == code
        assert status.details == shorten(str(error))
        assert len(status.details.encode()) <= MAX_DETAIL_BYTES
        (violation,) = _field_violations(status)
        assert violation.field == shorten(field, MAX_FIELD_BYTES)
        assert violation.description == shorten(error.message)


def test_family_bases_are_never_raised_themselves() -> None:
    sources = [path.read_text() for path in Path(nnprobe_services.__file__).parent.rglob("*.py")]
    for base in _family_bases() - {ServiceError}:
        built = re.compile(rf"(?<!class )\b{base.__name__}\(")
        assert not any(built.search(source) for source in sources), f"{_name(base)} would end as INTERNAL"


def test_exceptions_that_can_end_a_request_are_domain_errors() -> None:
    handled = tuple(cls for cls in _exceptions() if _name(cls) in HANDLED_INSIDE)
    outside = [
        _name(cls)
        for cls in _exceptions()
        if not issubclass(cls, ServiceError) and not issubclass(cls, handled)
    ]
    assert outside == []


def test_queue_full_and_missing_weights_answer_as_the_servicers_translated_them() -> None:
    from nnprobe_services.vision.classification.batcher import QueueFull
    from nnprobe_services.vision.models.registry import WeightsMissing

    full = QueueFull("3 images are queued for m; 2 more would exceed the queue size 4")
    translated = ResourceExhausted(full.message, field="images")
    assert isinstance(full, ResourceExhausted)
    assert (str(full), full.message, full.field) == (str(translated), translated.message, translated.field)
    assert error_status(full) == error_status(translated)

    missing = WeightsMissing("downloads are off (weights_download_timeout = 0)")
    assert isinstance(missing, FailedPrecondition)
    assert (str(missing), missing.field) == ("downloads are off (weights_download_timeout = 0)", None)
    assert status_code(missing) == grpc.StatusCode.FAILED_PRECONDITION
