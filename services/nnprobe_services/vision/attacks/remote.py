"""Transfer checks on other VisionService servers, called over ``grpc.aio`` on the event loop: each address
is asked for its default model (ListModels: name, input size, labels, repository version), which then
classifies the 8-bit original and adversarial PNGs through its own preprocessing (as is when they are its
input size, resized and centre-cropped otherwise), with the caller's bearer token, within what is left of
the caller's deadline. ``transfer`` says how long a call may take and how it is retried, ``verdicts`` what
the answer means; this is the one place outside the servicers that speaks gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

from nnprobe_services.vision.attacks import transfer, verdicts
from nnprobe_services.vision.attacks.verdicts import Transfer
from nnprobe_services.vision.attacks.workflow import AttackResult
from nnprobe_services.vision.classification.classify import ClassScore


async def transfers(
    addresses: Sequence[str],
    outcome: AttackResult,
    context: grpc.aio.ServicerContext,
    connect_timeout: float,
) -> list[Transfer]:
    """The transfer result of every address, in order; ``context``: the caller's call."""
    token = _bearer(context)
    calls = [_check_at(a, outcome, token, context, connect_timeout) for a in addresses]
    return list(await asyncio.gather(*calls))


async def _check_at(
    address: str,
    outcome: AttackResult,
    token: str | None,
    context: grpc.aio.ServicerContext,
    connect_timeout: float,
) -> Transfer:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    budget = transfer.call_timeout(_remaining(context))
    started = time.monotonic()

    def left() -> float:
        return max(budget - (time.monotonic() - started), 0.001)

    try:
        async with grpc.aio.insecure_channel(address, options=transfer.channel_options()) as channel:
            wait = min(connect_timeout, budget)
            try:  # a replica that is restarting: reconnect with gRPC's backoff until it accepts
                await asyncio.wait_for(channel.channel_ready(), wait)
            except TimeoutError:
                if connect_timeout:
                    return verdicts.failed("", address, transfer.unreachable(address, wait))
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            listing = await stub.ListModels(pb.ListModelsRequest(), timeout=left(), metadata=metadata)
            info = _default_model(listing)
            call = _classify_request(info, outcome)
            answer = await stub.Classify(call, timeout=left(), metadata=metadata)
    except grpc.RpcError as error:
        text = f"{error.code().name}: {error.details()} (at {address})"  # type: ignore[attr-defined]
        return verdicts.failed("", address, text)
    except ValueError as error:
        return verdicts.failed("", address, str(error))
    return _judged(address, info, call, answer, outcome.goal_label)


def _default_model(listing: pb.ListModelsResponse) -> pb.ModelInfo:
    for info in listing.models:
        if info.name == listing.default_model:
            return info
    raise ValueError(f"the server lists no default model {listing.default_model!r}")


def _classify_request(info: pb.ModelInfo, outcome: AttackResult) -> pb.ClassifyRequest:
    """Original and adversarial PNG for the model ``info``: skip its resize exactly when the pictures are
    its input size; every class (for its labels) when the attack is targeted and the model has labels."""
    height, width = outcome.image.adversarial.shape[:2]
    crop = info.preprocessing.crop
    every = outcome.goal_label is not None and info.num_labels > 0
    return pb.ClassifyRequest(
        images=[
            common_pb2.Image(encoded=outcome.original_png),
            common_pb2.Image(encoded=outcome.adversarial_png),
        ],
        model=info.name,
        top_k=info.num_labels if every else 1,
        skip_resize=(crop.height, crop.width) == (height, width),
        model_version=info.default_version if info.in_repository else 0,
    )


def _judged(
    address: str,
    info: pb.ModelInfo,
    call: pb.ClassifyRequest,
    answer: pb.ClassifyResponse,
    target: str | None,
) -> Transfer:
    before, after = (_score(result.top[0]) for result in answer.results)
    labels = [s.label for s in sorted(answer.results[1].top, key=lambda s: s.index)] if call.top_k > 1 else []
    return verdicts.outcome(
        answer.model or info.name,
        address,
        before,
        after,
        target,
        labels,
        model_version=call.model_version,
        weights_sha256=answer.model_version,
    )


def _score(value: pb.ClassScore) -> ClassScore:
    return ClassScore(value.index, value.label, value.probability)


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(remaining, 0.001)
