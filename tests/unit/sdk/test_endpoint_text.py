"""A remote Open Inference model given to ``evaluate_robustness(endpoint=...)``: ``HOST:PORT/MODEL[/VERSION]``
text or an (address, model[, version]) tuple; text without a model is a ValueError naming ``endpoint``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe.vision.robustness import remote_model

HOSTS = st.sampled_from(["localhost", "10.0.0.7", "[::1]", "dns:///svc.example", "triton-0.ns.svc"])
NAMES = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)


@given(
    HOSTS, st.integers(1, 65535), NAMES, st.one_of(st.just(""), st.from_regex(r"[0-9]{1,4}", fullmatch=True))
)
def test_text_and_tuples_give_the_same_remote_model(host, port, model, version):
    address = f"{host}:{port}"
    text = f"{address}/{model}" + (f"/{version}" if version else "")
    parsed = remote_model(text)
    # The parts, split independently: the address is everything before the "/" that follows the port.
    assert (parsed.address, parsed.model_name, parsed.model_version) == (address, model, version)
    as_tuple = remote_model((address, model, version) if version else (address, model))
    assert as_tuple == parsed


@pytest.mark.parametrize(
    "endpoint", ["localhost:8001", "localhost:8001/", ("localhost:8001",), ("a", "b", "c", "d")]
)
def test_an_endpoint_without_a_model_names_the_argument(endpoint):
    with pytest.raises(ValueError, match=r"^endpoint: "):
        remote_model(endpoint)
