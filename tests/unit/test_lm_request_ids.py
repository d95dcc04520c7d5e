"""StartTraining's idempotency key: which keys are accepted, and the request digest a retry must match.

The accepted keys are checked against a regular expression written here ('' or 1 to 128 characters from
'!' to '~'), the digest against the protobuf messages' own equality."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.sequence.lm.requests import request_id
from nnprobe_services.sequence.messages import request_digest

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


configs = st.fixed_dictionaries(
    {},
    optional={
        "hidden_size": st.integers(1, 2048),
        "epochs": st.integers(1, 50),
        "seed": st.integers(0, 2**31),
        "learning_rate": st.floats(1e-6, 10.0),
        "dropout": st.floats(0.0, 0.9),
        "tie_weights": st.booleans(),
        "device": st.sampled_from(["", "cpu", "cuda:1"]),
    },
)
requests = st.builds(
    lambda corpus, name, config: pb.StartTrainingRequest(
        corpus_id=corpus, name=name, config=pb.TrainingConfig(**config)
    ),
    st.sampled_from(["ptb", "corpus-1", "corpus-2"]),
    st.text(max_size=8),
    configs,
)


@given(requests, requests, st.uuids(), st.uuids())
def test_the_digest_tells_requests_apart_whatever_their_keys(a, b, key_a, key_b):
    a.request_id, b.request_id = str(key_a), str(key_b)
    same = pb.StartTrainingRequest(
        corpus_id=a.corpus_id, name=a.name, config=a.config
    ) == pb.StartTrainingRequest(corpus_id=b.corpus_id, name=b.name, config=b.config)
    assert (request_digest(a) == request_digest(b)) == same
    reordered = pb.StartTrainingRequest()  # fields set in another order: the same digest
    reordered.config.CopyFrom(a.config)
    reordered.name = a.name
    reordered.corpus_id = a.corpus_id
    assert request_digest(reordered) == request_digest(a)
