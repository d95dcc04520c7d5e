"""``analyze_gradients(model=...)``'s request: only the fields that go with a repository model are sent,
and built-cell options given with a model are refused before anything is sent."""

from typing import Any

import numpy as np
import pytest
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.sequence.gradients import analyze_gradients_request
from nnprobe.sequence.model_gradients import model_flow

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


def test_a_model_request_carries_the_model_fields_only():
    x = np.arange(6.0).reshape(3, 2)
    request = analyze_gradients_request(
        **dict(DEFAULTS, seed=4, dtype="float32", regime_tolerance=0.0, random_initial_state=True),
        model="cell",
        model_version=3,
        inputs=x,
    )
    expected = pb.AnalyzeGradientsRequest(
        model="cell",
        model_version=3,
        seed=4,
        dtype=common_pb2.DTYPE_FLOAT32,
        regime_tolerance=0.0,
        random_initial_state=True,
    )
    expected.inputs.CopyFrom(tensors.to_tensor(x))
    assert request == expected and request.HasField("regime_tolerance")
    tokens = analyze_gradients_request(**DEFAULTS, model="lm", token_ids=[3, 1, 2])
    assert list(tokens.token_ids) == [3, 1, 2] and not tokens.HasField("inputs") and not tokens.cells


@pytest.mark.parametrize(
    "changed",
    [{"cells": ["lstm"]}, {"spectral_radii": [1.0]}, {"hidden_size": 3}, {"plot": True}, {"init_scale": 2.0}],
)
def test_built_cell_options_with_a_model_are_a_value_error_naming_them(changed):
    with pytest.raises(ValueError, match=next(iter(changed))):
        analyze_gradients_request(**dict(DEFAULTS, **changed), model="cell")


def test_model_options_without_a_model_and_both_inputs_are_value_errors():
    with pytest.raises(ValueError, match="only with model="):
        analyze_gradients_request(**DEFAULTS, token_ids=[1])
    with pytest.raises(ValueError, match="not both"):
        analyze_gradients_request(**DEFAULTS, model="m", token_ids=[1], inputs=np.zeros((1, 1)))


def test_the_flow_of_a_one_state_cell_has_no_cell_state_fields():
    message = pb.ModelGradientFlow(
        model="g",
        model_version=1,
        task="recurrent_cell",
        measured=pb.MEASURED_GRADIENT_STATE,
        distances=[2, 1],
        jacobian_norms=[0.25, 0.5],
        step_norms=[0.5, 0.5],
        growth_rate=0.5,
        regime=pb.REGIME_VANISHING,
    )
    flow = model_flow(message)
    assert flow.cell_state_norms is None and flow.cell_regime is None and flow.loss_gradient_norms is None
    assert flow.measured == "state" and flow.regime == "vanishing"
    assert flow.to_pandas().to_dict("records") == [
        {"distance": 2, "jacobian_norm": 0.25, "step_norm": 0.5},
        {"distance": 1, "jacobian_norm": 0.5, "step_norm": 0.5},
    ]
