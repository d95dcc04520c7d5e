"""Transfer checks on other VisionService servers, called over ``grpc.aio`` on the event loop: each address
classifies the 8-bit adversarial picture (its default model, no resize) with the caller's bearer token,
within what is left of the caller's deadline. ``transfer`` says how long a call may take, how it is retried
and what its answer means; this is the one place outside the servicers that speaks gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

from nnprobe_services.vision.attacks import transfer
from nnprobe_services.vision.attacks.adversarial import Transfer
from nnprobe_services.vision.attacks.workflow import AttackResult
from nnprobe_services.vision.classification.classify import ClassScore


async def transfers(
    addresses: Sequence[str],
    outcome: AttackResult,
    targeted: bool,
    context: grpc.aio.ServicerContext,
    connect_timeout: float,
) -> list[Transfer]:
    """The transfer result of every address, in order; ``context``: the caller's call."""
    token = _bearer(context)
    calls = [_classify_at(a, outcome, targeted, token, context, connect_timeout) for a in addresses]
    return list(await asyncio.gather(*calls))


async def _classify_at(
    address: str,
    outcome: AttackResult,
    targeted: bool,
    token: str | None,
    context: grpc.aio.ServicerContext,
    connect_timeout: float,
) -> Transfer:
    goal = outcome.image.goal_class
    call = pb.ClassifyRequest(
        images=[common_pb2.Image(encoded=outcome.adversarial_png)], skip_resize=True, top_k=1
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    budget = transfer.call_timeout(_remaining(context))
    started = time.monotonic()
    try:
        async with grpc.aio.insecure_channel(address, options=transfer.channel_options()) as channel:
            wait = min(connect_timeout, budget)
            try:  # a replica that is restarting: reconnect with gRPC's backoff until it accepts
                await asyncio.wait_for(channel.channel_ready(), wait)
            except TimeoutError:
                if connect_timeout:
                    error = transfer.unreachable(address, wait)
                    return transfer.remote_outcome(address, "", None, goal, targeted, error)
            left = max(budget - (time.monotonic() - started), 0.001)
            answer = await vision_pb2_grpc.VisionServiceStub(channel).Classify(
                call, timeout=left, metadata=metadata
            )
    except grpc.RpcError as error:
        text = f"{error.code().name}: {error.details()} (at {address})"  # type: ignore[attr-defined]
        return transfer.remote_outcome(address, "", None, goal, targeted, text)
    except ValueError as error:
        return transfer.remote_outcome(address, "", None, goal, targeted, str(error))
    best = answer.results[0].top[0]
    score = ClassScore(best.index, best.label, best.probability)
    return transfer.remote_outcome(address, answer.model, score, goal, targeted)


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(remaining, 0.001)
