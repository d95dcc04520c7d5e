"""A negative number given to an option is read as the option's value (and judged by its own check), never as
an unknown option: integers, decimals, exponents and fractions like ``-1/255`` alike."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.cli import build_parser


def error_of(argv: list[str]) -> str:
    """The one error line the parser prints for ``argv``."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    return stderr.getvalue().strip().splitlines()[-1]


negative = st.one_of(
    st.builds(lambda a, b: f"-{a}/{b}", st.integers(0, 999), st.integers(1, 999)),
    st.builds(lambda a, b: f"-{a}.{b}", st.integers(0, 99), st.integers(0, 99)),
    st.builds(lambda a, e: f"-{a}e{e}", st.integers(1, 9), st.integers(-5, 5)),
    st.integers(-999, -1).map(str),
)


@given(value=negative)
def test_a_negative_budget_is_the_options_value_and_its_own_check_refuses_it(value):
    for argv in (
        ["attack", "x.png", "--untargeted", "--eps", value],
        ["robustness", "m", "d", "--eps", value],
    ):
        line = error_of(argv)
        assert f"argument --eps: {value} is not above 0" in line, line


def test_an_option_name_that_starts_like_a_number_is_still_an_unknown_option():
    assert "unrecognized arguments: -x1" in error_of(["attack", "x.png", "--untargeted", "-x1"])
