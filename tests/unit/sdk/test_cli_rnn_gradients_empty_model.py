"""``nnprobe rnn gradients --model ''`` is a usage error naming --model before anything is sent, instead of
an analysis of built cells that the empty name would fall back to (no server runs here)."""

import contextlib
import io

import pytest
from nnprobe.cli import main


@pytest.mark.parametrize("extra", [[], ["-T", "5"], ["--token-ids", "1", "2"]])
def test_an_empty_model_name_is_a_usage_error_naming_model(extra):
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        status = main(
            ["rnn", "gradients", "--address", "127.0.0.1:9", "--timeout", "0.5", "--model", "", *extra]
        )
    assert status == 2
    assert "--model: give a repository model name" in errors.getvalue()
    assert "spectral_radii" not in errors.getvalue()
