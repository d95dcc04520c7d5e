"""Recurrent and token model configs (``repository.tasks``): parsed into the shapes they declare, round-trip
through YAML, and every bad key refused naming its path."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository import tasks


def test_an_lstm_like_cell_has_two_states_of_the_hidden_size():
    config = tasks.parse_yaml("task: recurrent_cell\ninput_size: 3\nhidden_size: 5\nstates: 2\n")
    assert (config.task, config.input_size, config.hidden_size) == ("recurrent_cell", 3, 5)
    assert config.state_sizes == (5, 5)
    assert config.labels is None and config.default_version is None


def test_a_token_model_reads_d_model_and_pooled():
    config = tasks.parse_yaml("task: token_model\nd_model: 8\npooled: true\nvocabulary: 100\n")
    assert (config.hidden_size, config.pooled, config.vocabulary, config.input_size) == (8, True, 100, None)
    assert config.state_sizes == ()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("input_size: 3\nhidden_size: 5\n", "config.task"),
        ("task: image_classification\nhidden_size: 5\n", "config.task"),
        ("task: recurrent_cell\nhidden_size: 5\n", "config.input_size"),
        ("task: recurrent_cell\ninput_size: 3\n", "config.hidden_size"),
        ("task: recurrent_cell\ninput_size: 3\nhidden_size: 5\nstates: 3\n", "config.states"),
        ("task: sequence_model\ninput_size: 3\nhidden_size: 0\n", "config.hidden_size"),
        ("task: sequence_model\ninput_size: 3\nhidden_size: 4\nvocabulary: 9\n", "config.input_size"),
        ("task: token_model\nd_model: 8\npooled: 1\n", "config.pooled"),
        ("task: token_model\nhidden_size: 8\n", "config"),
        ("task: token_model\nd_model: 8\nstates: 2\n", "config"),
        ("task: token_model\nd_model: 8\ndefault_version: 0\n", "config.default_version"),
        ("- a list\n", "config"),
    ],
)
def test_each_mistake_names_its_key(text, field):
    with pytest.raises(InvalidArgument) as raised:
        tasks.parse_yaml(text)
    assert raised.value.field == field


def test_a_service_accepts_only_its_tasks():
    with pytest.raises(InvalidArgument, match="recurrent_cell, sequence_model") as raised:
        tasks.parse_yaml("task: token_model\nd_model: 8\n", "metadata.config_yaml", tasks.TASKS[:2])
    assert raised.value.field == "metadata.config_yaml.task"


configs = st.one_of(
    st.builds(
        lambda i, h, s: {"task": "recurrent_cell", "input_size": i, "hidden_size": h, "states": s},
        st.integers(1, 64),
        st.integers(1, 64),
        st.integers(1, 2),
    ),
    st.builds(
        lambda v, h, t: {"task": "sequence_model", "vocabulary": v, "hidden_size": h, "sequence_length": t},
        st.integers(1, 1000),
        st.integers(1, 64),
        st.integers(1, 100),
    ),
    st.builds(
        lambda d, p, b: {"task": "token_model", "d_model": d, "pooled": p, "batch_size": b},
        st.integers(1, 64),
        st.booleans(),
        st.integers(1, 8),
    ),
)


@given(document=configs)
def test_configs_round_trip_through_yaml(document):
    config = tasks.parse(document)
    assert tasks.parse_yaml(config.to_yaml()) == config
    assert {k: v for k, v in yaml.safe_load(config.to_yaml()).items() if v is not False} == {
        k: v for k, v in document.items() if v is not False
    }


@given(
    width=st.one_of(st.integers(max_value=0), st.integers(min_value=tasks.MAX_WIDTH + 1), st.text(max_size=3))
)
def test_every_bad_width_is_refused_naming_it(width):
    with pytest.raises(InvalidArgument) as raised:
        tasks.parse({"task": "sequence_model", "input_size": 3, "hidden_size": width})
    assert raised.value.field == "config.hidden_size"
