"""Results as strict JSON: whatever floats a result holds (infinite deviations, NaN), the CLI's --json and
RobustnessResult.to_json write text that a strict parser reads, and every number reads back as itself."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st
from nnprobe.cli.output import print_json
from nnprobe.json_text import json_text

VALUES = st.recursive(
    st.floats() | st.integers() | st.text(max_size=5) | st.booleans() | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _same(read, value) -> bool:
    if isinstance(value, float):
        return (isinstance(read, str) and (float(read) == value or math.isnan(value))) or read == value
    if isinstance(value, dict):
        return set(read) == set(value) and all(_same(read[k], v) for k, v in value.items())
    if isinstance(value, list):
        return len(read) == len(value) and all(_same(r, v) for r, v in zip(read, value, strict=True))
    return read == value


@given(VALUES)
def test_any_value_is_strict_json_and_reads_back(value):
    assert _same(_strict(json_text(value)), value)


def test_the_cli_writes_an_infinite_deviation_as_text(capsys):
    print_json({"deviation": math.inf, "ratio": -math.inf, "noise": math.nan, "holds": False})
    assert _strict(capsys.readouterr().out) == {
        "deviation": "inf",
        "ratio": "-inf",
        "noise": "nan",
        "holds": False,
    }
