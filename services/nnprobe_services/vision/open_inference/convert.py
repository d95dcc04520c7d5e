"""Open Inference Protocol messages (package ``inference``) to and from the plain values of ``protocol``.

Input contents arrive either as ``raw_input_contents`` (one little-endian byte string per input, in input
order; BYTES elements each prefixed by their 4-byte little-endian length) or as the typed ``contents`` of the
input (``fp32_contents``, ``uint_contents``, ``bytes_contents``), never both. Outputs always go back as
``raw_output_contents``, as Triton does.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from nnprobe.api.inference import grpc_service_pb2 as pb
from nnprobe.api.inference import model_config_pb2 as config_pb

from nnprobe_services.vision.open_inference import protocol
from nnprobe_services.vision.open_inference.workflow import InferQuery

FORMATS = {protocol.PIXELS: config_pb.ModelInput.FORMAT_NCHW}
CONFIG_TYPES = {"FP32": config_pb.TYPE_FP32, "UINT8": config_pb.TYPE_UINT8, "BYTES": config_pb.TYPE_STRING}


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if all(d >= 0 for d in shape) else -1


def unpack_bytes(raw: bytes, count: int, where: str, field: str) -> list[bytes]:
    """``count`` length-prefixed elements of a raw BYTES tensor; ``InvalidArgument`` when they do not fit."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise protocol.ProtocolInvalidArgument(
                f"{where}: element {len(items)} has a truncated length prefix", field=field
            )
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise protocol.ProtocolInvalidArgument(
                f"{where}: element {len(items)} declares {size} bytes but {len(raw) - offset} remain",
                field=field,
            )
        items.append(raw[offset : offset + size])
        offset += size
    if len(items) != count:
        raise protocol.ProtocolInvalidArgument(
            f"{where}: expected {count} string elements, got {len(items)}", field=field
        )
    return items


def pack_bytes(items: list[bytes]) -> bytes:
    """The raw form of a BYTES tensor: each element prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def infer_query(request: pb.ModelInferRequest) -> InferQuery:
    """The request as plain values; its inputs' contents are read later (``infer_inputs``)."""
    return InferQuery(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        outputs=requested_outputs(request),
        headers=input_headers(request),
        inputs=lambda: infer_inputs(request),
    )


def input_headers(request: pb.ModelInferRequest) -> list[protocol.InputTensor]:
    """Every input's name, datatype and shape, without its contents (for the checks that need none)."""
    return [
        protocol.InputTensor(message.name, message.datatype, tuple(int(d) for d in message.shape), [])
        for message in request.inputs
    ]


def infer_inputs(request: pb.ModelInferRequest) -> list[protocol.InputTensor]:
    """Every input of ``request`` as a flat array (or list of bytes), its contents checked against its
    datatype and shape. Datatypes other than the model's are passed through for ``protocol`` to reject."""
    model = request.model_name
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise protocol.ProtocolInvalidArgument(
            f"expected {len(request.inputs)} raw input contents (one per input) for model '{model}', "
            f"got {len(raw)}",
            field="raw_input_contents",
        )
    tensors = []
    for i, message in enumerate(request.inputs):
        shape = tuple(int(d) for d in message.shape)
        count = _count(shape)
        name, datatype = message.name, message.datatype
        where = f"input '{name}' for model '{model}'"
        data: np.ndarray | list[bytes]
        if raw and message.HasField("contents"):
            raise protocol.ProtocolInvalidArgument(
                f"contents field must not be specified when using raw_input_contents for {where}",
                field=f"inputs[{i}].contents",
            )
        if count < 0 or datatype not in (*protocol.DTYPES, "BYTES"):
            data = []  # protocol rejects the shape or datatype with Triton's message
        elif raw:
            if datatype == "BYTES":
                data = unpack_bytes(raw[i], count, where, f"raw_input_contents[{i}]")
            else:
                expected = count * protocol.ELEMENT_BYTES[datatype]
                if len(raw[i]) != expected:
                    raise protocol.ProtocolInvalidArgument(
                        f"input byte size mismatch for {where}. Expected {expected}, got {len(raw[i])}",
                        field=f"raw_input_contents[{i}]",
                    )
                data = np.frombuffer(raw[i], dtype=protocol.DTYPES[datatype])
        else:
            data = _typed(message.contents, datatype, count, where, f"inputs[{i}].contents")
        tensors.append(protocol.InputTensor(name, datatype, shape, data))
    return tensors


def _typed(
    contents: pb.InferTensorContents, datatype: str, count: int, where: str, field: str
) -> np.ndarray | list[bytes]:
    values: np.ndarray | list[bytes]
    if datatype == "BYTES":
        values = list(contents.bytes_contents)
    elif datatype == "FP32":
        values = np.asarray(contents.fp32_contents, dtype=np.float32)
    else:
        wide = np.asarray(contents.uint_contents, dtype=np.uint32)
        if wide.size and int(wide.max()) > 255:
            raise protocol.ProtocolInvalidArgument(
                f"{where}: UINT8 values must be in 0..255", field=f"{field}.uint_contents"
            )
        values = wide.astype(np.uint8)
    if len(values) != count:
        raise protocol.ProtocolInvalidArgument(
            f"unexpected number of elements for {where}: the shape holds {count}, the contents {len(values)}",
            field=field,
        )
    return values


def requested_outputs(request: pb.ModelInferRequest) -> list[protocol.RequestedOutput]:
    """The outputs asked for, with the classification extension's ``classification`` parameter."""
    outputs = []
    for i, message in enumerate(request.outputs):
        count = None
        if "classification" in message.parameters:
            parameter = message.parameters["classification"]
            if parameter.WhichOneof("parameter_choice") != "int64_param":
                raise protocol.ProtocolInvalidArgument(
                    "the classification parameter must be an int64", field=f"outputs[{i}].parameters"
                )
            count = parameter.int64_param
        outputs.append(protocol.RequestedOutput(message.name, count))
    return outputs


def infer_response(
    signature: protocol.Signature, version: int, request_id: str, outputs: list[protocol.OutputTensor]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=signature.name, model_version=str(version), id=request_id)
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        if output.strings is not None:
            response.raw_output_contents.append(pack_bytes(output.strings))
        else:
            assert output.data is not None
            response.raw_output_contents.append(np.ascontiguousarray(output.data, dtype="<f4").tobytes())
    return response


def error_response(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """The ``infer_response`` beside a streamed error: the failed request's ``id``, model name and version
    as the request gave them (Triton's convention), so a client can match the error to its request."""
    return pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )


def _tensor_metadata(spec: protocol.TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def metadata_response(signature: protocol.Signature) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=signature.name,
        versions=list(signature.versions),
        platform=signature.platform,
        inputs=[_tensor_metadata(spec) for spec in signature.inputs],
        outputs=[_tensor_metadata(spec) for spec in signature.outputs],
    )


def config_response(signature: protocol.Signature, batch_delay_us: int | None) -> pb.ModelConfigResponse:
    """The model's configuration in Triton's schema (dims without the batch dimension, which
    ``max_batch_size`` > 0 implies); ``batch_delay_us`` None: no dynamic batching."""
    config = config_pb.ModelConfig(
        name=signature.name,
        platform=signature.platform,
        backend=signature.backend,
        max_batch_size=signature.max_batch_size,
        version_policy=config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All()),
    )
    for spec in signature.inputs:
        config.input.add(
            name=spec.name,
            data_type=CONFIG_TYPES[spec.datatype],
            dims=list(spec.shape[1:]),
            optional=spec.optional,
            format=config_pb.ModelInput.FORMAT_NCHW
            if spec.name == protocol.PIXELS
            else config_pb.ModelInput.FORMAT_NONE,
        )
    for spec in signature.outputs:
        config.output.add(
            name=spec.name,
            data_type=CONFIG_TYPES[spec.datatype],
            dims=list(spec.shape[1:]),
            label_filename="labels.txt" if signature.labels else "",
        )
    if batch_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = batch_delay_us
    return pb.ModelConfigResponse(config=config)


def index_response(rows: list[tuple[str, str, str, str]]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(name=name, version=version, state=state, reason=reason)
            for name, version, state, reason in rows
        ]
    )
