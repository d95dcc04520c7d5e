"""SequenceService servicer. The service is declared; its RPCs are registered here as they land."""

from __future__ import annotations

import grpc
import torch
from nnprobe._proto.sequence.v1 import sequence_pb2, sequence_pb2_grpc

from nnprobe_services.server.config import ServerConfig


class SequenceServicer(sequence_pb2_grpc.SequenceServiceServicer):
    """Thin layer: validate, convert, call the core, convert back."""

    def __init__(self, config: ServerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device


def register(server: grpc.Server, config: ServerConfig, device: torch.device) -> list[str]:
    """Add the servicer to `server`; return the full names of the services added."""
    sequence_pb2_grpc.add_SequenceServiceServicer_to_server(SequenceServicer(config, device), server)
    return [sequence_pb2.DESCRIPTOR.services_by_name["SequenceService"].full_name]
