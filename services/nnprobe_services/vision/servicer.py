"""VisionService servicer. The service is declared; its RPCs are registered here as they land."""

from __future__ import annotations

import grpc
import torch
from nnprobe._proto.vision.v1 import vision_pb2, vision_pb2_grpc

from nnprobe_services.server.config import ServerConfig


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """Thin layer: validate, convert, call the core, convert back."""

    def __init__(self, config: ServerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device


def register(server: grpc.Server, config: ServerConfig, device: torch.device) -> list[str]:
    """Add the servicer to `server`; return the full names of the services added."""
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(config, device), server)
    return [vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name]
