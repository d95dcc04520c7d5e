"""The SDK's exceptions: one subclass of ``NnprobeError`` per gRPC status, built from a real
``grpc.aio.AioRpcError`` whose trailing metadata carries a ``google.rpc.Status`` with a BadRequest detail."""

from __future__ import annotations

import pickle

import grpc
import grpc.aio
import nnprobe
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.errors import ERROR_CLASSES, FieldViolation, NnprobeError

FAILURES = [code for code in grpc.StatusCode if code != grpc.StatusCode.OK]


def class_name(code: grpc.StatusCode) -> str:
    """The class a status names, spelt here from the status name: DEADLINE_EXCEEDED -> DeadlineExceeded."""
    return "".join(part.capitalize() for part in code.name.split("_"))


def rpc_error(code: grpc.StatusCode, message: str, violations: list[tuple[str, str]]) -> grpc.RpcError:
    """The error a server's status interceptor sends: code, message and, with violations, a BadRequest."""
    trailing: tuple[tuple[str, bytes], ...] = ()
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=message)


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30)


@given(
    code=st.sampled_from(FAILURES),
    message=texts,
    violations=st.lists(st.tuples(texts.filter(bool), texts), max_size=3),
)
def test_every_status_maps_to_its_subclass(code, message, violations):
    error = NnprobeError.from_rpc_error(rpc_error(code, message, violations))
    assert type(error).__name__ == class_name(code) and type(error) is getattr(nnprobe, class_name(code))
    assert isinstance(error, NnprobeError) and error.code == code and error.message == message
    assert error.field_violations == [FieldViolation(f, d) for f, d in violations]
    assert str(error).startswith(f"{code.name}: {message}")
    # Built from the code alone, the base class gives the same subclass; pickling keeps it.
    again = NnprobeError(code, message, error.field_violations)
    assert type(again) is type(error) and type(pickle.loads(pickle.dumps(again))) is type(error)


def test_the_table_covers_every_failure_and_nothing_else():
    assert sorted(ERROR_CLASSES, key=lambda c: c.value) == FAILURES
    assert sorted(c.__name__ for c in ERROR_CLASSES.values()) == sorted(class_name(c) for c in FAILURES)


def test_a_subclass_takes_only_the_message():
    error = nnprobe.InvalidArgument("bad", [FieldViolation("attention.scale", "must be finite")])
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == "INVALID_ARGUMENT: bad\n  attention.scale: must be finite"
    assert nnprobe.NotFound("no job j").field_violations == []
    with pytest.raises(TypeError, match=r"grpc\.StatusCode"):
        NnprobeError("a message without a code")


def test_a_status_without_details_has_no_violations():
    error = NnprobeError.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "no job 'j'", []))
    assert isinstance(error, nnprobe.NotFound) and error.field_violations == []
