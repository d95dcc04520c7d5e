"""Asyncio clients: ``nnprobe.aio.VisionClient``, ``SequenceClient`` and ``AttentionClient``.

The same methods with the same keyword arguments as the sync clients of ``nnprobe``, as coroutines (and
async iterators for ``generate_adversarial`` and ``watch_job``), over ``grpc.aio`` channels: usable inside a
notebook's running event loop (``await client.classify(...)``) and from other asyncio services. They build
requests and read results with the same functions as the sync clients, raise the same exceptions and report
the same ``nnprobe.Progress``.

    async with nnprobe.aio.VisionClient("localhost:50051") as vision:
        result = await vision.classify("cat.jpg")
"""

from nnprobe.aio.attention import AttentionClient
from nnprobe.aio.sequence import SequenceClient
from nnprobe.aio.vision import VisionClient

__all__ = ["AttentionClient", "SequenceClient", "VisionClient"]
