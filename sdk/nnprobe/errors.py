"""The one exception type the SDK raises."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (``attention.x``) and what is wrong with it."""

    field: str
    description: str


@dataclass(eq=False)
class NnprobeError(Exception):
    """A call failed. ``code`` is the gRPC status code; ``field_violations`` name the bad fields."""

    code: grpc.StatusCode
    message: str
    field_violations: list[FieldViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for v in self.field_violations:
            if f"{v.field}: {v.description}" not in self.message:
                text += f"\n  {v.field}: {v.description}"
        return text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> NnprobeError:
        """Build from a failed call, decoding ``google.rpc.BadRequest`` details when present."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        violations: list[FieldViolation] = []
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except ValueError:
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        return cls(code=code, message=message or "", field_violations=violations)
