"""``analyze_gradients``' integer arguments outside their protobuf wire types (``seed`` uint64;
``sequence_length``, ``model_version``, ``token_ids`` int64) are refused before anything is sent, with a
ValueError naming the argument; every value inside its range makes a request that carries it unchanged."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.sequence.gradients import analyze_gradients_request

DEFAULTS: dict[str, Any] = {
    "cells": None,
    "spectral_radii": (),
    "hidden_size": 0,
    "sequence_length": 0,
    "input_size": 0,
    "input_distribution": "normal",
    "input_scale": None,
    "seed": 0,
    "weights": None,
    "init": "pytorch",
    "init_scale": None,
    "forget_bias": 0.0,
    "random_initial_state": False,
    "dtype": None,
    "regime_tolerance": None,
    "plot": False,
}
#: The wire ranges written out from the .proto's types.
UINT64 = (0, 18446744073709551615)
INT64 = (-9223372036854775808, 9223372036854775807)
RANGES = {"seed": UINT64, "sequence_length": INT64, "model_version": INT64, "token_ids": INT64}


def _request(name: str, value: int):
    arguments = dict(DEFAULTS, model="cell")
    arguments[name] = [value] if name == "token_ids" else value
    return analyze_gradients_request(**arguments)


@given(name=st.sampled_from(sorted(RANGES)), value=st.integers(-(2**70), 2**70))
def test_an_integer_outside_its_wire_type_is_a_value_error_naming_it(name, value):
    low, high = RANGES[name]
    if low <= value <= high:
        request = _request(name, value)
        sent = list(request.token_ids) if name == "token_ids" else getattr(request, name)
        assert sent == ([value] if name == "token_ids" else value)
        return
    with pytest.raises(ValueError, match=rf"^{name}: ") as refused:
        _request(name, value)
    assert str(value) in str(refused.value)


def test_a_negative_seed_for_built_cells_is_refused_naming_seed():
    with pytest.raises(ValueError, match=r"^seed: must lie in 0\.\.18446744073709551615"):
        analyze_gradients_request(**dict(DEFAULTS, cells=["rnn"], seed=-5))
