"""Connected pixels follow the real taps of every layer (dilation holes, strides larger than the kernel,
padding, ceil mode): checked against one-hot influence pushed through real PyTorch layers."""

from fractions import Fraction

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields.arithmetic import (
    InvalidSpec,
    LayerSpec,
    analyse_layers,
)
from nnprobe_services.vision.receptive_fields.boxes import connected_pixels, unit_field


def _support_box(specs, size, layer, x, y):
    """Rows and columns of the input pixels that reach unit (x, y): autograd through torch layers with
    all-positive weights (convolutions; pooling as avg_pool2d where PyTorch allows its geometry)."""
    image = torch.ones(1, 1, *size, dtype=torch.float64, requires_grad=True)
    out = image
    for spec in specs:
        (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.stride or spec.kernel, spec.dilation
        top, bottom, left, right = spec.padding
        pooled = spec.kind == "pool" and (dh, dw) == (1, 1) and not spec.ceil_mode
        if pooled and top == bottom <= kh // 2 and left == right <= kw // 2:
            out = F.avg_pool2d(out, (kh, kw), (sh, sw), (top, left), count_include_pad=True)
        else:
            extra_h = extra_w = 0
            if spec.ceil_mode:  # the window that starts inside the input and runs past its end
                n_h, n_w = out.shape[2] + top + bottom, out.shape[3] + left + right
                extra_h = (-(n_h - dh * (kh - 1) - 1)) % sh
                extra_w = (-(n_w - dw * (kw - 1) - 1)) % sw
            padded = F.pad(out, (left, right + extra_w, top, bottom + extra_h))
            weight = torch.ones(1, 1, kh, kw, dtype=torch.float64)
            out = F.conv2d(padded, weight, stride=(sh, sw), dilation=(dh, dw))
            if spec.ceil_mode:
                rows = _ceil_size(padded.shape[2] - bottom - extra_h, top, bottom, kh, sh, dh)
                columns = _ceil_size(padded.shape[3] - right - extra_w, left, right, kw, sw, dw)
                out = out[:, :, :rows, :columns]
        if spec.name == layer:
            break
    (grad,) = torch.autograd.grad(out[0, 0, y, x], image)
    support = grad[0, 0] != 0
    rows = torch.nonzero(support.any(1)).flatten().tolist()
    columns = torch.nonzero(support.any(0)).flatten().tolist()
    if not rows:
        return (0, -1), (0, -1)
    return (rows[0], rows[-1]), (columns[0], columns[-1])


def _ceil_size(n_and_before, before, after, kernel, stride, dilation):
    """PyTorch's pooling output size with ceil_mode (``pooling_output_shape`` in ATen)."""
    n = n_and_before - before
    span = n + before + after - dilation * (kernel - 1) - 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= n + before else out


def test_one_dilated_convolution_at_the_border():
    specs = [LayerSpec("c", "conv", (3, 3), (1, 1), (2, 2), (1, 1, 1, 1))]
    fields = analyse_layers(specs, (8, 8), Fraction(1, 2))
    unit = unit_field(fields, "c", 0, 0, (8, 8), Fraction(1, 2))
    # Taps at -1, 1 and 3 along each axis: pixel -1 is padding, 0 and 2 are holes.
    assert (unit.rows, unit.columns) == ((1, 3), (1, 3))
    assert (unit.rows, unit.columns) == _support_box(specs, (8, 8), "c", 0, 0)
    # The clipped analytic field still spans pixels 0..3: the proof compares connected pixels, not spans.
    assert (unit.vertical_clipped.first, unit.vertical_clipped.last) == (0, 3)


def test_stride_larger_than_kernel_skips_pixels():
    specs = [
        LayerSpec("a", "conv", (2, 2), (3, 3), padding=(0, 0, 0, 0)),
        LayerSpec("b", "conv", (2, 2), (1, 1), (1, 1), (1, 1, 1, 1)),
    ]
    fields = analyse_layers(specs, (11, 11), Fraction(1, 2))
    assert connected_pixels(fields, "b", 0, 0) == ((0, 1), (0, 1))  # only "a" unit 0 is read
    assert connected_pixels(fields, "b", 1, 1) == ((0, 4), (0, 4))
    assert connected_pixels(fields, "b", 1, 1) == _support_box(specs, (11, 11), "b", 1, 1)


@st.composite
def chains(draw):
    size = (draw(st.integers(4, 24)), draw(st.integers(4, 24)))
    specs, current = [], size
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "pool"]))
        kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
        ceil = draw(st.booleans())
        spec = LayerSpec(f"l{index}", kind, kernel, stride, dilation, padding, ceil)
        try:
            fields = analyse_layers([*specs, spec], size, Fraction(1, 2))
        except InvalidSpec:  # an impossible layer (no output left) ends the chain
            break
        specs.append(spec)
        current = (fields[-1].height.size, fields[-1].width.size)
    if not specs:
        specs = [LayerSpec("l0", "conv", (1, 1))]
        current = size
    y = draw(st.integers(0, current[0] - 1))
    x = draw(st.integers(0, current[1] - 1))
    return specs, size, x, y


@settings(max_examples=300, deadline=None)
@given(chains())
def test_connected_pixels_equal_the_one_hot_influence_of_real_layers(chain):
    specs, size, x, y = chain
    fields = analyse_layers(specs, size, Fraction(1, 2))
    last = specs[-1].name
    assert connected_pixels(fields, last, x, y) == _support_box(specs, size, last, x, y)
