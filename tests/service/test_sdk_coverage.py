"""Every RPC of every service has an SDK method (snake_case of the RPC name)."""

import re

import nnprobe
import pytest
from nnprobe.api.attention.v1 import attention_pb2
from nnprobe.api.sequence.v1 import sequence_pb2
from nnprobe.api.vision.v1 import vision_pb2

SERVICES = [
    (attention_pb2, "AttentionService", nnprobe.AttentionClient),
    (vision_pb2, "VisionService", nnprobe.VisionClient),
    (sequence_pb2, "SequenceService", nnprobe.SequenceClient),
]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(("module", "service", "client"), SERVICES, ids=[s[1] for s in SERVICES])
def test_every_rpc_has_an_sdk_method(module, service, client):
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == client.FULL_NAME
    missing = [m.name for m in descriptor.methods if not callable(getattr(client, snake(m.name), None))]
    assert not missing, f"{client.__name__} lacks methods for {missing}"
