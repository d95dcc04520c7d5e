"""Client for VisionService."""

from __future__ import annotations

from typing import Any

from nnprobe._client import BaseClient
from nnprobe._proto.vision.v1 import vision_pb2_grpc


class VisionClient(BaseClient):
    """``VisionClient("localhost:50051")``. Methods arrive with the service's RPCs."""

    SERVICE = "vision"
    FULL_NAME = "nnprobe.vision.v1.VisionService"

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._stub = vision_pb2_grpc.VisionServiceStub(self._channel)
