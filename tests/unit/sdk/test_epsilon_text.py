"""ε and step sizes given as text: a number or a fraction like ``4/255``, else a ValueError naming the
argument, never a bare arithmetic error."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.vision.adversarial import parse_epsilon


def reference(text: str) -> float | None:
    """The value a person means by ``text``, read independently with ``fractions.Fraction``; None when it
    has none."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        return None


@pytest.mark.parametrize(("text", "value"), [("4/255", 4 / 255), ("0.0157", 0.0157), ("8", 8.0)])
def test_numbers_and_fractions_are_read(text, value):
    assert parse_epsilon(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["8/0", "a/255", "", "4//255", "1/2/3"])
def test_text_without_a_value_names_the_argument(text):
    with pytest.raises(ValueError, match=r"^step_size: .* is not a number or a fraction like 4/255"):
        parse_epsilon(text, "step_size")


@given(
    st.one_of(
        st.text(max_size=12),
        st.builds(lambda a, b: f"{a}/{b}", st.integers(-300, 300), st.integers(-3, 300)),
    )
)
def test_any_text_is_its_value_or_a_value_error_naming_eps(text):
    try:
        got = parse_epsilon(text)
    except ValueError as error:
        assert str(error).startswith("eps: ") and len(str(error)) < 220  # 40 characters quoted
        assert reference(text) is None, f"{text!r} has a value"
        return
    expected = reference(text)
    if expected is not None:  # Python's float() also reads 'inf', 'nan' and '1_0', which Fraction may not
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)
