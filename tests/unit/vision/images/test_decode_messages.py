"""Image-decoding errors say why in words: never the server's object representations or addresses."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.images import preprocess
from PIL import Image

LIMITS = preprocess.ImageLimits(1 << 20, 1 << 16)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_unidentified_bytes_name_no_stream_object():
    with pytest.raises(InvalidArgument) as caught:
        preprocess.decode(b"hello", field="image", limits=LIMITS)
    message = caught.value.message
    assert message == "the image is not a readable image (cannot identify image file the bytes)"
    assert caught.value.field == "image"


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(min_size=1, max_size=256), st.binary(max_size=64).map(lambda b: _png()[:40] + b)))
def test_any_bytes_decode_or_fail_without_object_addresses(data):
    try:
        preprocess.decode(data, field="image", limits=LIMITS)
    except (InvalidArgument, ResourceExhausted) as error:
        assert " object at 0x" not in error.message and error.field == "image"
