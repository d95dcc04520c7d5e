"""Asyncio clients: ``nnprobe.aio.SequenceClient`` and ``AttentionClient``.

The same methods with the same keyword arguments as the sync clients of ``nnprobe``, as coroutines (and
async iterators for ``generate_adversarial`` and ``watch_job``), over ``grpc.aio`` channels: usable inside a
notebook's running event loop (``await client.get_job(...)``) and from other asyncio services. They build
requests and read results with the same functions as the sync clients, raise the same exceptions and report
the same ``nnprobe.Progress``.

    async with nnprobe.aio.SequenceClient("localhost:50052") as sequence:
        job = await sequence.wait_job(job_id, on_progress=print)
"""

from nnprobe.aio.attention import AttentionClient
from nnprobe.aio.sequence import SequenceClient

__all__ = ["AttentionClient", "SequenceClient"]
