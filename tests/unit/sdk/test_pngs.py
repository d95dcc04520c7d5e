"""The SDK's PNG encoder against Pillow's decoder (an independent implementation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nnprobe.pngs import encode_png, signed_picture
from PIL import Image


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        st.one_of(
            st.tuples(st.integers(1, 40), st.integers(1, 40)),
            st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3)),
        ),
    )
)
def test_pillow_decodes_exactly_what_was_encoded(pixels):
    with Image.open(io.BytesIO(encode_png(pixels))) as image:
        assert image.mode == ("L" if pixels.ndim == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("shape,dtype", [((4, 4, 4), np.uint8), ((4, 4), np.float32), ((4,), np.uint8)])
def test_other_shapes_and_dtypes_are_refused(shape, dtype):
    with pytest.raises(ValueError, match="pixels must be uint8"):
        encode_png(np.zeros(shape, dtype))


def test_signed_pictures_put_zero_at_mid_gray():
    picture = signed_picture(np.array([[-2.0, 0.0, 1.0, 2.0]]))
    assert picture.tolist() == [[0, 128, 191, 255]]
    assert signed_picture(np.zeros((2, 2))).tolist() == [[128, 128], [128, 128]]
