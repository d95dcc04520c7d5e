"""``nnprobe rnn gradients --model NAME[:VERSION]``: the reference parsed, and options that would be ignored
in silence refused before anything is sent (no server runs here: a request would fail to connect)."""

import argparse
import contextlib
import io

import pytest
from nnprobe.cli import main
from nnprobe.cli.rnn_model_gradients import model_reference


def test_model_references():
    assert model_reference("cell") == ("cell", 0)
    assert model_reference("cell:12") == ("cell", 12)
    assert model_reference("a:b:3") == ("a:b", 3)
    for bad in ("cell:", ":3", "cell:v2", f"cell:{2**63}"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME:VERSION"):
            model_reference(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--token-ids", "1", "2"], "--token-ids goes with --model"),
        (["--input-file", "x.npy"], "--input-file goes with --model"),
        (["--model", "m", "--cells", "lstm"], "--cells describes built cells"),
        (["--model", "m", "-H", "8"], "--hidden-size describes built cells"),
        (["--model", "m", "--rho", "0.9"], "--rho describes built cells"),
        (["--model", "m", "--input-file", "x.npy", "--token-ids", "1"], "give one of them"),
    ],
)
def test_options_that_would_be_ignored_are_refused(argv, message):
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        status = main(["rnn", "gradients", "--address", "127.0.0.1:9", "--timeout", "0.5", *argv])
    assert status != 0 and message in errors.getvalue()
