"""Scenarios run with the real ``tritonclient[grpc]`` in its own virtual environment (.venv-triton: it needs
protobuf < 7, the project pins 7), one process per call:

    .venv-triton/bin/python tests/support/triton_client.py SCENARIO < arguments.json

Prints one JSON document: what the client saw (arrays as nested lists, errors as
``{"status": "NOT_FOUND", "message": ...}``). This file imports nothing of nnprobe.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def _error(error: InferenceServerException) -> dict[str, Any]:
    return {"status": str(error.status()).removeprefix("StatusCode."), "message": error.message()}


def _client(args: dict[str, Any]) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(args["address"])


def _headers(args: dict[str, Any]) -> dict[str, str] | None:
    return args.get("headers")


def status(args: dict[str, Any]) -> dict[str, Any]:
    """Liveness, server metadata, readiness (waiting up to ``wait`` s for the server), model metadata and
    configs of ``models``, the repository index."""
    client = _client(args)
    out: dict[str, Any] = {"live": client.is_server_live()}
    meta = client.get_server_metadata(as_json=True)
    out["server"] = meta
    deadline = time.monotonic() + args.get("wait", 0)
    out["ready_first"] = client.is_server_ready()
    ready = out["ready_first"]
    while not ready and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = client.is_server_ready()
    out["ready"] = ready
    out["models"] = {}
    for name, version in args.get("models", []):
        entry: dict[str, Any] = {}
        try:
            entry["metadata"] = client.get_model_metadata(name, version, as_json=True)
            entry["config"] = client.get_model_config(name, version, as_json=True)["config"]
            entry["ready"] = client.is_model_ready(name, version)
        except InferenceServerException as error:
            entry["error"] = _error(error)
        out["models"][f"{name}:{version}"] = entry
    out["index"] = client.get_model_repository_index(as_json=True).get("models", [])
    return out


def wait_model(args: dict[str, Any]) -> dict[str, Any]:
    """Poll ModelReady until true or ``wait`` seconds; then the repository index."""
    client = _client(args)
    deadline = time.monotonic() + args["wait"]
    ready = client.is_model_ready(args["model"], args.get("version", ""))
    while not ready and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = client.is_model_ready(args["model"], args.get("version", ""))
    return {"ready": ready, "index": client.get_model_repository_index(as_json=True).get("models", [])}


def _input(spec: dict[str, Any]) -> grpcclient.InferInput:
    datatype = spec["datatype"]
    if datatype == "BYTES":
        array = np.array([base64.b64decode(item) for item in spec["b64"]], dtype=object)
    else:
        array = np.array(
            spec["data"], dtype={"FP32": np.float32, "UINT8": np.uint8, "FP64": np.float64}[datatype]
        )
    array = array.reshape(spec["shape"])
    tensor = grpcclient.InferInput(spec["name"], list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _result(result: grpcclient.InferResult, names: list[str]) -> dict[str, Any]:
    response = result.get_response()
    out: dict[str, Any] = {"model_version": response.model_version, "id": response.id, "outputs": {}}
    for output in response.outputs:
        array = result.as_numpy(output.name)
        if array.dtype == object:
            out["outputs"][output.name] = [[s.decode() for s in row] for row in array]
        else:
            out["outputs"][output.name] = array.tolist()
    return out


def infer(args: dict[str, Any]) -> dict[str, Any]:
    """``client.infer`` with ``inputs`` (name, datatype, shape, data or b64) and ``outputs`` (name,
    class_count); raw contents, as tritonclient sends them."""
    client = _client(args)
    outputs = [
        grpcclient.InferRequestedOutput(o["name"], class_count=o.get("class_count", 0))
        for o in args.get("outputs", [])
    ]
    try:
        result = client.infer(
            args["model"],
            [_input(spec) for spec in args["inputs"]],
            model_version=args.get("version", ""),
            outputs=outputs or None,
            request_id=args.get("id", ""),
            headers=_headers(args),
        )
    except InferenceServerException as error:
        return {"error": _error(error)}
    return _result(result, [o["name"] for o in args.get("outputs", [])])


def infer_typed(args: dict[str, Any]) -> dict[str, Any]:
    """ModelInfer through tritonclient's generated stub with typed contents (fp32/uint/bytes_contents)
    instead of raw contents; ``raw_too`` also sets raw contents (a request the server must refuse)."""
    import grpc

    request = service_pb2.ModelInferRequest(model_name=args["model"])
    for spec in args["inputs"]:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        if spec["datatype"] == "FP32":
            tensor.contents.fp32_contents.extend(np.asarray(spec["data"], dtype=np.float32).ravel().tolist())
        elif spec["datatype"] == "UINT8":
            tensor.contents.uint_contents.extend(np.asarray(spec["data"]).ravel().tolist())
        else:
            tensor.contents.bytes_contents.extend(base64.b64decode(b) for b in spec["b64"])
        if args.get("raw_too"):
            request.raw_input_contents.append(b"\0" * 4)
    if "raw_bytes" in args:
        request.raw_input_contents.append(base64.b64decode(args["raw_bytes"]))
        for tensor in request.inputs:
            tensor.ClearField("contents")
    with grpc.insecure_channel(args["address"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelInfer(request, timeout=120)
        except grpc.RpcError as error:
            return {"error": {"status": error.code().name, "message": error.details()}}
    result = grpcclient.InferResult(response)
    return _result(result, [])


def stream(args: dict[str, Any]) -> dict[str, Any]:
    """``start_stream`` + ``async_stream_infer`` for each of ``requests``; the results and errors the
    callback received, in order."""
    client = _client(args)
    received: list[dict[str, Any]] = []

    def callback(result, error):
        if error is not None:
            received.append({"error": error.message()})
        else:
            received.append(_result(result, []))

    client.start_stream(callback=callback, headers=_headers(args))
    for i, request in enumerate(args["requests"]):
        client.async_stream_infer(
            request["model"], [_input(spec) for spec in request["inputs"]], request_id=str(i)
        )
    deadline = time.monotonic() + 120
    while len(received) < len(args["requests"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    return {"received": received}


def calls(args: dict[str, Any]) -> dict[str, Any]:
    """Extension RPCs: statistics and shared-memory status, as errors or answers."""
    client = _client(args)
    out: dict[str, Any] = {}
    for name, call in (
        ("statistics", lambda: client.get_inference_statistics(as_json=True)),
        ("system_shared_memory", lambda: client.get_system_shared_memory_status(as_json=True)),
        ("load", lambda: client.load_model("x")),
    ):
        try:
            out[name] = {"answer": call()}
        except InferenceServerException as error:
            out[name] = {"error": _error(error)}
    return out


def descriptors(_args: dict[str, Any]) -> dict[str, Any]:
    """tritonclient's compiled ``grpc_service.proto`` and ``model_config.proto`` (serialized, base64)."""
    from tritonclient.grpc import model_config_pb2

    return {
        module.DESCRIPTOR.name: base64.b64encode(module.DESCRIPTOR.serialized_pb).decode()
        for module in (service_pb2, model_config_pb2)
    }


if __name__ == "__main__":
    scenario, arguments = sys.argv[1], json.loads(sys.stdin.read() or "{}")
    print(json.dumps(globals()[scenario](arguments)))
