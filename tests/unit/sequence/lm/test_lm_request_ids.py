"""StartTraining's idempotency key: which keys are accepted, and the request digest a retry must match.

The accepted keys are checked against a regular expression written here ('' or 1 to 128 characters from
'!' to '~'), the digest against the configuration the server resolves each request to (``training_config``):
two requests have one digest exactly when they train the same thing."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.sequence.lm.convert import given_config, request_digest
from nnprobe_services.sequence.lm.corpus import Corpus, Split
from nnprobe_services.sequence.lm.training_checks import request_id, training_config

ACCEPTED = re.compile(r"[!-~]{0,128}")
keys = st.one_of(
    st.text(max_size=140),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=140),
    st.from_regex(r"[!-~]{120,135}", fullmatch=True),
    st.uuids().map(str),
)


@given(keys)
def test_a_key_is_accepted_exactly_when_it_is_short_printable_ascii(key):
    if ACCEPTED.fullmatch(key):
        assert request_id(key) == key
        return
    with pytest.raises(InvalidArgument) as info:
        request_id(key)
    assert info.value.field == "request_id"
    if len(key) <= 128:  # the message points at the first character at fault
        first = next(i for i, c in enumerate(key) if not "!" <= c <= "~")
        assert f"character {first} is {key[first]!r}" in str(info.value)


#: Values each field may take, its default among them (given explicitly, or left out).
FIELD_VALUES = {
    "embed_size": [0, 128, 32],
    "hidden_size": [0, 1024, 64],
    "epochs": [0, 5, 7],
    "log_interval": [0, 10, 3],
    "optimizer": [pb.OPTIMIZER_UNSPECIFIED, pb.OPTIMIZER_ADAM, pb.OPTIMIZER_SGD],
    "learning_rate": [0.002, 20.0, 0.01],
    "clip_norm": [0.5, 0.0, 1.0],
    "dropout": [0.0, -0.0, 0.25],
    "lr_decay": [0.0, 1.0, 0.5],
    "workers": [0, 1],
    "seed": [0, 3],
    "tie_weights": [False],
}
configs = st.fixed_dictionaries(
    {}, optional={name: st.sampled_from(values) for name, values in FIELD_VALUES.items()}
)
requests = st.builds(
    lambda corpus, name, config: pb.StartTrainingRequest(
        corpus_id=corpus, name=name, config=pb.TrainingConfig(**config)
    ),
    st.sampled_from(["ptb", "corpus-1"]),
    st.sampled_from(["", "a"]),
    configs,
)
CORPUS = Corpus("c", "c", [f"w{i}" for i in range(50)], {"train": Split(torch.zeros(5000), 1, 0)}, "")


def resolved(request: pb.StartTrainingRequest):
    """What the request trains, as the server resolves it (on a CPU server): corpus, name, config."""
    given = given_config(request.config)
    config, _ = training_config(given, CORPUS, limit=10**9, device=torch.device("cpu"))
    return request.corpus_id, request.name, config.to_dict()


@given(requests, requests, st.uuids(), st.uuids())
def test_the_digest_is_the_same_exactly_when_the_requests_ask_for_the_same_training(a, b, key_a, key_b):
    """Equal digests exactly when the server resolves both requests to the same corpus, name and
    configuration: a field given at its default or left out, the key and the fields' order do not count."""
    a.request_id, b.request_id = str(key_a), str(key_b)
    assert (request_digest(a) == request_digest(b)) == (resolved(a) == resolved(b))
    reordered = pb.StartTrainingRequest()  # fields set in another order: the same digest
    reordered.config.CopyFrom(a.config)
    reordered.name = a.name
    reordered.corpus_id = a.corpus_id
    assert request_digest(reordered) == request_digest(a)


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_a_device_given_is_another_request_than_the_servers_default(device):
    """'' is whatever device the serving replica has, so it is not the same request as a named device."""
    named = pb.StartTrainingRequest(corpus_id="ptb", config=pb.TrainingConfig(device=device))
    assert request_digest(named) != request_digest(pb.StartTrainingRequest(corpus_id="ptb"))
