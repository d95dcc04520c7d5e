"""What the command line says when it is used wrongly: every mistake is one ``error:`` line that names the
command, the option or file, and what to do, with exit status 2 before any request; a server that is down
names its address and how to start one; an unknown model or layer suggests the closest name.

Every command is found by walking the parser, so a new command or option is covered without being listed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import socket
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe.cli import build_parser, main
from nnprobe.cli.parsing import INT_MAX, range_of

#: command -> the arguments that make a valid command line ({tmp}: a folder of inputs made below).
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
    "lm perplexity": ["job-1"],
    "lm sample": ["job-1"],
    "lm distance": ["a", "b", "--job", "job-1"],
    "lm nearest": ["a", "--job", "job-1"],
    "lm tensorboard": ["job-1", "--out", "{tmp}/tensorboard"],
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
QUICK = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    found.pop("serve")  # its words go to the servers' own parser
    return found


def _is_value_parser(kind) -> bool:
    """A function that parses an option's text (not a class such as ``int`` or ``Path``)."""
    return callable(kind) and not isinstance(kind, type)


COMMANDS = _commands()
#: (command, option) for every option whose values are parsed: numbers and custom value parsers.
TYPED = [
    (command, action.option_strings[-1])
    for command, parser in COMMANDS.items()
    for action in parser._actions
    if action.option_strings and (range_of(action) is not None or _is_value_parser(action.type))
]
CALLING = [c for c, p in COMMANDS.items() if p.get_default("client_service")]
#: (command, option) for every option that takes a value, whatever its type.
VALUED = [
    (command, action.option_strings[-1])
    for command, parser in COMMANDS.items()
    for action in parser._actions
    if action.option_strings and action.nargs != 0
]


def _png(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128] * 4) for _ in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-messages")
    _png(folder / "a.png")
    (folder / "model.onnx").write_bytes(b"\x08\x07")
    (folder / "train.txt").write_text("the cat sat\n")
    return folder


@pytest.fixture(scope="module")
def closed_address() -> str:
    """An address where nothing listens (a port bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture
def nowhere(monkeypatch, closed_address) -> str:
    """Every service's address points at ``closed_address``: a request that slips through fails with 1."""
    for variable in ("NNPROBE_VISION_ADDR", "NNPROBE_SEQUENCE_ADDR", "NNPROBE_ATTENTION_ADDR"):
        monkeypatch.setenv(variable, closed_address)
    return closed_address


def _run(words: list[str], inputs: Path | None = None) -> tuple[int, str, str]:
    """Exit status, standard output and standard error of ``nnprobe WORDS``."""
    words = [w.replace("{tmp}", str(inputs)) for w in words]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(words)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def _one_error_line(command: str, err: str) -> str:
    """The single ``error:`` line of ``err``, after checking that it is the only one and names the command."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nnprobe {command}: error: "), err
    return lines[0]


def _bad_numbers(action: argparse.Action) -> st.SearchStrategy[str]:
    """Text that is not a number of the option's kind, or a number outside its range."""
    bounds = range_of(action)
    words = st.text(min_size=1, max_size=8).filter(lambda t: not _parses(t, action.type))
    if bounds is None:
        return words
    below = [] if bounds.low is None else [bounds.low - 1 if action.type is int else bounds.low - 0.5]
    if bounds.low_open:
        below.append(bounds.low)
    above = [] if bounds.high is None else [bounds.high + 1, bounds.high * 10 + 7]
    numbers = st.sampled_from([*below, *above]) if below or above else st.nothing()
    special = st.sampled_from(["nan", "inf", "-inf"]) if action.type is float else st.nothing()
    return st.one_of(words, numbers.map(lambda v: str(int(v) if action.type is int else v)), special)


def _parses(text: str, kind) -> bool:
    if kind not in (int, float):
        return False
    try:
        value = kind(text)
    except ValueError:
        return False
    return kind is int or math.isfinite(value)


@pytest.mark.parametrize(("command", "option"), TYPED, ids=[f"{c}:{o}" for c, o in TYPED])
def test_a_bad_value_is_one_error_line_and_exit_2(command, option, inputs, nowhere):
    """Every option that parses its value, given text that is not a value or a number out of range: one
    ``error:`` line naming the option, no parser function's name, status 2, before any request."""
    action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)

    @QUICK
    @given(value=_bad_numbers(action))
    def check(value: str) -> None:
        status, _, err = _run([*command.split(), *BASE[command], f"{option}={value}"], inputs)
        if _is_value_parser(action.type) and status != 2:
            return  # random text a value parser accepts (a unit "a:1,2" is valid text)
        assert status == 2, err
        line = _one_error_line(command, err)
        assert f"argument {'/'.join(action.option_strings)}:" in line or "expected one argument" in line
        if _is_value_parser(action.type):
            assert action.type.__name__ not in err and "invalid" not in line

    check()


@pytest.mark.parametrize(("command", "option"), VALUED, ids=[f"{c}:{o}" for c, o in VALUED])
def test_a_double_dash_as_an_options_value_is_a_missing_value(command, option, inputs, nowhere):
    """Every option that takes a value, given ``--`` as that value (``--seed=--``, ``-K=--``), under any of
    its spellings: one ``error:`` line naming the option, status 2, before any request (argparse alone
    drops the ``--`` and hands the request an empty list)."""
    action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)

    @settings(QUICK, max_examples=4)
    @given(spelling=st.sampled_from(action.option_strings))
    def check(spelling: str) -> None:
        status, _, err = _run([*command.split(), *BASE[command], f"{spelling}=--"], inputs)
        assert status == 2, err
        line = _one_error_line(command, err)
        assert f"argument {'/'.join(action.option_strings)}: expected " in line

    check()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_option_shows_the_commands_own_usage(command, inputs, nowhere):
    @QUICK
    @given(name=st.from_regex(r"--[a-z]{3,10}-zz", fullmatch=True))
    def check(name: str) -> None:
        status, _, err = _run([*command.split(), *BASE[command], name], inputs)
        assert status == 2
        assert err.startswith(f"usage: nnprobe {command} ")
        assert _one_error_line(command, err) == f"nnprobe {command}: error: unrecognized arguments: {name}"

    check()


@pytest.mark.parametrize("command", CALLING)
def test_no_server_names_the_address_and_how_to_start_one(command, inputs, nowhere, closed_address):
    """Every command that calls a server, with nothing listening at its address (from the environment
    here, from --address below)."""
    service = COMMANDS[command].get_default("client_service")
    status, _, err = _run([*command.split(), *BASE[command], "--timeout", "3"], inputs)
    assert status == 1
    assert err == f"error: no server at {closed_address} (start one with: nnprobe serve {service})\n"


def test_no_server_at_the_address_given(inputs, closed_address):
    status, _, err = _run(["rnn", "forward", "--address", closed_address, "--timeout", "3"])
    assert (status, err) == (
        1,
        f"error: no server at {closed_address} (start one with: nnprobe serve sequence)\n",
    )


@QUICK
@given(budget=st.integers(2, 255), option=st.sampled_from(["--eps", "--step-size"]))
def test_a_budget_above_one_suggests_eighth_bit_steps(budget, option, inputs, nowhere):
    status, _, err = _run(["attack", "{tmp}/a.png", "--target", "3", option, str(budget)], inputs)
    assert status == 2
    assert _one_error_line("attack", err) == (
        f"nnprobe attack: error: argument {option}: {budget} is above 1: budgets are in (0, 1] pixel units; "
        f"did you mean {budget}/255?"
    )


@QUICK
@given(numerator=st.integers(0, 10_000), bad=st.sampled_from(["0", "0.0", "x", ""]))
def test_a_fraction_that_is_not_a_number_is_refused(numerator, bad, inputs, nowhere):
    status, _, err = _run(["attack", "{tmp}/a.png", "--target", "3", "--eps", f"{numerator}/{bad}"], inputs)
    assert status == 2
    line = _one_error_line("attack", err)
    assert ("divides by zero" if bad.startswith("0") else "is not a number or a fraction like 4/255") in line


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("classify", ["classify", "{missing}"]),
        ("attack", ["attack", "{tmp}/a.png", "{missing}", "--untargeted"]),
        ("rf", ["rf", "--layers", "c:k3", "--image", "{missing}"]),
    ],
)
def test_a_missing_image_is_named(command, words, inputs, nowhere):
    @QUICK
    @given(name=st.from_regex(r"[a-z0-9_]{1,12}\.(png|jpg)", fullmatch=True))
    def check(name: str) -> None:
        missing = str(inputs / "absent" / name)
        status, _, err = _run([w.replace("{missing}", missing) for w in words], inputs)
        assert status == 2
        assert _one_error_line(command, err) == f"nnprobe {command}: error: image not found: {missing}"

    check()


def test_ranges_describe_the_bound_that_was_crossed(inputs, nowhere):
    assert (
        "must be an integer >= 1, not 0"
        in _run(["attack", "{tmp}/a.png", "--untargeted", "--steps", "0"], inputs)[2]
    )
    assert (
        f"must be an integer at most {INT_MAX}, not {INT_MAX + 1}"
        in _run(["lm", "jobs", "--limit", str(INT_MAX + 1)])[2]
    )
    assert "must be a number in (0, 1], not 1.5" in _run(["lm", "sample", "j", "--top-p", "1.5"])[2]
    assert "must be a number > 0, not 0.0" in _run(["lm", "jobs", "--timeout", "0"])[2]


@QUICK
@given(
    names=st.lists(
        st.from_regex(r"[a-z]{4,10}[0-9]{0,2}", fullmatch=True), min_size=1, max_size=8, unique=True
    ),
    data=st.data(),
)
def test_the_closest_listed_name_is_suggested(names, data):
    """A server's message listing the names it has: a name one letter short of one of them is answered
    with that one (or one just as close)."""
    from nnprobe.cli.failures import closest_name

    wanted = data.draw(st.sampled_from(names))
    typo = wanted[:-1]
    for message in (
        f"unknown model {typo!r}; available: {', '.join(names)}, or any timm model by name (timm.list...)",
        f"no model {typo!r}; the available models are {', '.join(names)}",
        f"no layer {typo!r}; the layers are {', '.join(names)}",
    ):
        suggestion = closest_name(message)
        assert suggestion in names
        assert len(suggestion) >= len(wanted) - 2
    assert closest_name(f"no layer 'zzzzzzzzzzzz'; the layers are {', '.join(names)}") is None


def test_a_wrong_model_or_layer_name_suggests_the_closest(vision_server, inputs):
    status, _, err = _run(["rf", "--model", "resnet5", "--address", vision_server])
    assert status == 1 and "NOT_FOUND" in err and err.splitlines()[0].endswith("(did you mean resnet50?)")
    status, _, err = _run(
        ["classify", "{tmp}/a.png", "--model", "efficientnet_lite", "--address", vision_server], inputs
    )
    assert status == 1 and err.splitlines()[0].endswith("(did you mean efficientnet_lite0?)")
    layers = ["--layers", "conv1:k3", "pool1:k2,s2", "--input-size", "16", "--address", vision_server]
    status, _, err = _run(["rf", *layers, "--unit", "pool:1,1"])
    assert status == 1 and "no layer 'pool'" in err and err.splitlines()[0].endswith("(did you mean pool1?)")
