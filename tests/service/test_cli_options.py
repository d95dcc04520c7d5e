"""Every option of every calling CLI command reaches what is sent: the test walks the argparse tree, runs each
command once as given below and once more with each option set to a value other than its default, against a
gRPC server that records every request (its method, message, metadata and deadline) and answers
FAILED_PRECONDITION, and asserts that the two runs sent something different. Options that only shape the
output are listed with the reason; a new option is tested without being listed."""

from __future__ import annotations

import argparse
import contextlib
import io
import struct
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from nnprobe.api.attention.v1 import attention_pb2
from nnprobe.api.sequence.v1 import sequence_pb2
from nnprobe.api.vision.v1 import vision_pb2
from nnprobe.cli import build_parser, main

#: Options that shape only the command's output on this machine, never a request.
OUTPUT_ONLY = {
    "--json": "prints JSON instead of a table",
    "--plot": "a picture file written from the answer",
    "--save": "a file written from the answer",
    "--save-dir": "a folder written from the answer",
    "--all-layers": "which layers of the answer are printed",
    "--every": "which rows of the answer are printed",
    "--history": "prints the events of the answer",
    "--watch": "follows the job after the answer (the first RPC already failed here)",
    "--no-wait": "returns after the answer instead of following the job (the first RPC already failed here)",
    "--save-plot": "a picture file written from the answer",
    "--save-csv": "a file written from the answer",
    "--out": "a folder written from the answer",
}
#: Options that need a TLS server to reach one (tests/service/test_security.py covers them).
TLS = {"--tls-ca", "--tls-cert", "--tls-key"}
#: command -> the arguments of its first run ({tmp}: a folder of inputs made below).
BASE = {
    "health": [],
    "rf": ["--layers", "c:k3", "--input-size", "8"],
    "classify": ["{tmp}/a.png"],
    "attack": ["{tmp}/a.png", "--target", "3"],
    "models list": [],
    "models upload": ["{tmp}/model.onnx", "--name", "m"],
    "models delete": ["m"],
    "rnn forward": [],
    "rnn gradients": [],
    "rnn truncation": [],
    "rnn models list": [],
    "rnn models upload": ["{tmp}/model.onnx", "--name", "m"],
    "rnn models delete": ["m"],
    "lm upload": ["{tmp}/train.txt"],
    "lm train": [],
    "lm watch": ["job-1"],
    "lm jobs": [],
    "lm job": ["job-1"],
    "lm cancel": ["job-1"],
    "lm resume": ["job-1"],
    "lm tensorboard": ["job-1", "--out", "{tmp}/runs"],
    "lm perplexity": ["job-1"],
    "lm sample": ["job-1"],
    "lm distance": ["a", "b", "--job", "job-1"],
    "lm nearest": ["a", "--job", "job-1"],
    "attention equivariance": [],
    "attention pooling": [],
    "attention ffn": [],
    "attention models list": [],
    "attention models upload": ["{tmp}/model.onnx", "--name", "m"],
    "attention models delete": ["m"],
    "robustness": ["m", "d", "--eps", "1/255"],
    "dataset upload": ["d", "--server-folder", "x"],
    "robustness-job show": ["rob-1"],
    "robustness-job watch": ["rob-1"],
    "robustness-job cancel": ["rob-1"],
    "robustness-job resume": ["rob-1"],
    "robustness-jobs": [],
}
#: Values for options whose type a generic value does not fit (``None``: another file of the same kind).
VALUES = {
    "--input-size": ["9"],
    "--unit": ["c:1,1"],
    "--eps": ["4/255"],
    "--step-size": ["1/255"],
    "--target": ["5"],
    "--layers": ["d:k5"],
    "--layers-file": ["{tmp}/layers.json"],
    "--onnx": ["{tmp}/model.onnx"],
    "--image": ["{tmp}/a.png"],
    "--config": ["{tmp}/config.yaml"],
    "--labels": ["{tmp}/labels.txt"],
    "--valid": ["{tmp}/train.txt"],
    "--test": ["{tmp}/train.txt"],
    "--x": ["{tmp}/x.npy"],
    "--weights": None,
    "--inputs": None,
    "--format": ["pt2"],
    "--widths": ["4", "8", "4"],
    "--timeout": ["2"],
    "--model-option": ["num_classes=10"],
    "--tile": ["4x2"],
    "--erf-weights": ["random"],
    "--erf-image": ["{tmp}/a.png"],
}
#: Options that mean something only with another: (command, option) -> the other's arguments. Without
#: them the command refuses the option (test_a_dependent_option_alone_is_refused).
REQUIRES = {
    ("rf", "--model-version"): ["--model", "resnet18"],
    ("rf", "--erf-samples"): ["--erf"],
    ("rf", "--model-option"): ["--model", "resnet18"],
    ("rf", "--send-weights"): ["--onnx", "{tmp}/weights.onnx"],
    ("rf", "--seed"): ["--erf"],
    ("rf", "--prove-tiling"): ["--tile", "8"],
    ("rf", "--erf-weights"): ["--erf"],
    ("rf", "--erf-image"): ["--erf"],
    ("rnn gradients", "--input-file"): ["--model", "cell"],
    ("rnn gradients", "--token-ids"): ["--model", "cell"],
    ("attention equivariance", "--noise-ratio-threshold"): ["--model", "encoder"],
    ("attention pooling", "--noise-ratio-threshold"): ["--model", "encoder"],
}
FILE_VALUES = {
    ("rnn forward", "--inputs"): ["{tmp}/inputs.npy"],
    ("rnn forward", "--weights"): ["{tmp}/rnn.npz"],
    ("rnn gradients", "--weights"): ["{tmp}/rnn.npz"],
    ("rnn gradients", "--input-file"): ["{tmp}/x.npy"],
    ("attention equivariance", "--weights"): ["{tmp}/w.npy"] * 3,
    ("attention pooling", "--weights"): ["{tmp}/w.npy"] * 3,
}


def _services() -> dict[str, Any]:
    """``/package.Service/Method`` -> its method descriptor, for every service the CLI calls."""
    methods = {}
    for module, name in [
        (vision_pb2, "VisionService"),
        (sequence_pb2, "SequenceService"),
        (attention_pb2, "AttentionService"),
        (health_pb2, "Health"),
    ]:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            methods[f"/{service.full_name}/{method.name}"] = method
    return methods


@dataclass
class Call:
    method: str
    messages: list[Any]
    metadata: dict[str, str]
    deadline_s: float | None


@dataclass
class Recorder:
    """A gRPC server that records every request and answers FAILED_PRECONDITION."""

    calls: list[Call] = field(default_factory=list)

    def start(self) -> str:
        methods = _services()
        recorder = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                method = methods.get(details.method)
                if method is None:
                    return None
                parse = message_factory.GetMessageClass(method.input_type).FromString

                def record(requests, context):
                    messages = [parse(r) for r in (requests if method.client_streaming else [requests])]
                    metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                    recorder.calls.append(Call(details.method, messages, metadata, context.time_remaining()))
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "recorded")

                kinds = {
                    (False, False): grpc.unary_unary_rpc_method_handler,
                    (False, True): grpc.unary_stream_rpc_method_handler,
                    (True, False): grpc.stream_unary_rpc_method_handler,
                    (True, True): grpc.stream_stream_rpc_method_handler,
                }
                return kinds[(method.client_streaming, method.server_streaming)](record)

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers([Handler()])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return f"127.0.0.1:{port}"

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


def _png(path: Path) -> None:
    """A 4 x 4 grey 8-bit PNG, written by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128] * 4) for _ in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-inputs")
    _png(folder / "a.png")
    (folder / "model.onnx").write_bytes(b"\x08\x07")  # sent as bytes; the recorder does not read them
    weights = onnx.numpy_helper.from_array(np.ones(4096, np.float32), "W")  # 16 KiB: sent only on request
    graph = onnx.helper.make_graph([], "g", [], [], initializer=[weights])
    (folder / "weights.onnx").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    (folder / "layers.json").write_text('[{"name": "e", "kernel": 7}]')
    (folder / "config.yaml").write_text("input: {height: 4, width: 4}\n")
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "train.txt").write_text("the cat sat\n")
    np.save(folder / "x.npy", np.ones((3, 4)))
    np.save(folder / "w.npy", np.eye(4))
    np.save(folder / "inputs.npy", np.ones((2, 1, 3)))
    np.savez(
        folder / "rnn.npz",
        weight_ih_l0=np.ones((3, 3)),
        weight_hh_l0=np.eye(3),
        bias_ih_l0=np.zeros(3),
        bias_hh_l0=np.zeros(3),
    )
    return folder


@pytest.fixture(scope="module")
def recorders():
    first, second = Recorder(), Recorder()
    addresses = first.start(), second.start()
    yield (first, second), addresses
    for recorder in (first, second):
        recorder.server.stop(None)


def _commands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(words)] = parser
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*words, name])

    walk(build_parser(), [])
    found.pop("serve")  # starts servers: its options are the server's configuration
    return found


COMMANDS = _commands()
CASES = [
    (command, action.option_strings[-1])
    for command, parser in COMMANDS.items()
    for action in parser._actions
    if action.option_strings and not isinstance(action, argparse._HelpAction)
]


def test_every_command_has_a_first_run():
    assert sorted(BASE) == sorted(COMMANDS)


def _value(command: str, action: argparse.Action) -> list[str]:
    option = action.option_strings[-1]
    chosen = FILE_VALUES.get((command, option)) or VALUES.get(option)
    if chosen is not None:
        return chosen
    if action.nargs == 0:
        return []
    if action.choices:
        default = action.default if not isinstance(action.default, list) else action.default[:1]
        return [str(next(c for c in action.choices if c != default and [c] != default))]
    if action.type is int:
        return ["7"]
    if action.type is float:
        return ["0.375"]
    return ["other-value"]


def _run(command: str, argv: list[str], inputs: Path) -> tuple[int, str]:
    """Exit status and standard error of ``nnprobe COMMAND ARGV``."""
    words = [*command.split(), *(a.replace("{tmp}", str(inputs)) for a in argv)]
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        status = main(words)
    return status, errors.getvalue()


def _without_group_of(parser: argparse.ArgumentParser, option: str, argv: list[str]) -> list[str]:
    """``argv`` without the arguments of options that exclude ``option`` (a mutually exclusive group)."""
    for group in parser._mutually_exclusive_groups:
        strings = {s for a in group._group_actions for s in a.option_strings}
        if option in strings:
            kept, skipping = [], False
            for arg in argv:
                if arg in strings:
                    skipping = True
                    continue
                if skipping and not arg.startswith("--"):
                    continue
                skipping = False
                kept.append(arg)
            return kept
    return argv


@pytest.mark.parametrize(("command", "option"), CASES, ids=[f"{c}:{o}" for c, o in CASES])
def test_each_option_changes_what_is_sent(command, option, recorders, inputs, monkeypatch):
    (first, second), (address, other) = recorders
    for variable in ("NNPROBE_VISION_ADDR", "NNPROBE_SEQUENCE_ADDR", "NNPROBE_ATTENTION_ADDR"):
        monkeypatch.setenv(variable, address)
    monkeypatch.delenv("NNPROBE_TOKEN", raising=False)
    if option in OUTPUT_ONLY or option in TLS:
        return
    parser = COMMANDS[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    base = BASE[command]
    _run(command, base, inputs)
    before = first.take()
    assert before, f"`nnprobe {command}` sent nothing"
    if option == "--address":
        _run(command, [*base, "--address", other], inputs)
        assert not first.take(), f"`nnprobe {command} --address` still called the default address"
        assert [c.method for c in second.take()] == [c.method for c in before]
        return
    needs = REQUIRES.get((command, option), [])
    if needs:
        base = [*_without_group_of(parser, needs[0], base), *needs]
        _run(command, base, inputs)
        before = first.take()
    changed = [*_without_group_of(parser, option, base), option, *_value(command, action)]
    _run(command, changed, inputs)
    after = first.take()
    if option == "--max-message-bytes":  # a request over the client's limit is refused before sending
        status, errors = _run(command, [*base, option, "10"], inputs)
        sent = first.take()
        if max(m.ByteSize() for c in before for m in c.messages) <= 10:  # it fits, and goes
            assert [c.method for c in sent] == [c.method for c in before]
            return
        # A stream's first small messages (an upload's split header) may go before the refused one.
        delivered = [m for c in sent for m in c.messages if m.ByteSize() > 10]
        assert not delivered, f"`nnprobe {command} --max-message-bytes 10` sent a message over 10 bytes"
        assert status == 1 and "over the message limit of 10 bytes" in errors, errors
        return
    assert after, f"`nnprobe {command} {option}` sent nothing"
    if option == "--timeout":
        assert all(c.deadline_s is not None and c.deadline_s < 3 for c in after)  # 2 s, and slack
        assert all(c.deadline_s is None or c.deadline_s > 3 for c in before)
    elif option == "--token":
        assert {c.metadata.get("authorization") for c in after} == {"Bearer other-value"}
    else:
        sent = _comparable(after, option)
        assert sent != _comparable(before, option), f"{option} changes nothing that is sent"


def _comparable(calls: list, option: str) -> list:
    """(method, messages) of each call; StartTraining's idempotency key is a new UUID on every run unless
    ``--request-id`` gives it, so it is left out of the comparison for the other options."""
    compared = []
    for call in calls:
        messages = []
        for message in call.messages:
            if isinstance(message, sequence_pb2.StartTrainingRequest) and option != "--request-id":
                assert message.request_id  # the SDK's key for this run
                message = sequence_pb2.StartTrainingRequest.FromString(message.SerializeToString())
                message.ClearField("request_id")
            messages.append(message)
        compared.append((call.method, messages))
    return compared


@pytest.mark.parametrize(("command", "option"), sorted(REQUIRES))
def test_a_dependent_option_alone_is_refused(command, option, recorders, inputs, monkeypatch):
    (first, _), (address, _) = recorders
    for variable in ("NNPROBE_VISION_ADDR", "NNPROBE_SEQUENCE_ADDR", "NNPROBE_ATTENTION_ADDR"):
        monkeypatch.setenv(variable, address)
    action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)
    status, errors = _run(command, [*BASE[command], option, *_value(command, action)], inputs)
    needed = REQUIRES[(command, option)][0]
    assert status != 0 and f"{option} goes with {needed}" in errors
    assert not first.take()  # refused before any request


#: Options whose 0 is a value, not "the default": (command, option) -> the path of the field it sets.
ZERO_IS_A_VALUE = {
    ("attention equivariance", "--tolerance"): "permutations.tolerance",
    ("attention pooling", "--tolerance"): "permutations.tolerance",
    ("attention ffn", "--tolerance"): "tolerance",
    ("rnn forward", "--init-scale"): "cell.init_scale",
    ("rnn forward", "--settle-tolerance"): "settle_tolerance",
    ("rnn gradients", "--input-scale"): "input_scale",
    ("rnn gradients", "--regime-tolerance"): "regime_tolerance",
    ("attention equivariance", "--scale"): "attention.scale",
    ("rnn gradients", "--init-scale"): "init_scale",
}


@pytest.mark.parametrize(("command", "option"), sorted(ZERO_IS_A_VALUE))
def test_an_explicit_zero_is_sent_as_set_and_leaving_it_out_leaves_it_unset(
    command, option, recorders, inputs, monkeypatch
):
    (first, _), (address, _) = recorders
    for variable in ("NNPROBE_VISION_ADDR", "NNPROBE_SEQUENCE_ADDR", "NNPROBE_ATTENTION_ADDR"):
        monkeypatch.setenv(variable, address)
    *parents, name = ZERO_IS_A_VALUE[(command, option)].split(".")

    def holder(call: Call):
        message = call.messages[0]
        for part in parents:
            message = getattr(message, part)
        return message

    _run(command, [*BASE[command], option, "0"], inputs)
    (sent,) = first.take()
    assert holder(sent).HasField(name) and getattr(holder(sent), name) == 0.0
    _run(command, BASE[command], inputs)
    (sent,) = first.take()
    assert not holder(sent).HasField(name)
