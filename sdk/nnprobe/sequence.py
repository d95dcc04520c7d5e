"""Client for SequenceService."""

from __future__ import annotations

from typing import Any

from nnprobe._client import BaseClient
from nnprobe._proto.sequence.v1 import sequence_pb2_grpc


class SequenceClient(BaseClient):
    """``SequenceClient("localhost:50052")``. Methods arrive with the service's RPCs."""

    SERVICE = "sequence"
    FULL_NAME = "nnprobe.sequence.v1.SequenceService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = sequence_pb2_grpc.SequenceServiceStub(self._channel)
