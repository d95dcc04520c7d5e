"""Receptive-field arithmetic against the guide's notebook table, closed forms and brute force."""

from fractions import Fraction

import pytest
from nnprobe_services.vision.receptive_fields.arithmetic import (
    MAX_WINDOW,
    InvalidSpec,
    LayerSpec,
    Window,
    analyse_layers,
    output_size,
    same_padding,
)
from nnprobe_services.vision.receptive_fields.boxes import unit_field


@pytest.fixture(scope="module")
def notebook_specs(notebook_alexnet):
    """The notebook's AlexNet-style list as ``LayerSpec`` objects."""
    return [
        LayerSpec(name, "pool" if name.startswith("pool") else "conv", (k, k), (s, s), padding=(p, p, p, p))
        for name, k, s, p in notebook_alexnet.layers
    ]


def test_notebook_table_exactly(notebook_specs, notebook_alexnet):
    fields = analyse_layers(notebook_specs, (227, 227), Fraction(1))
    for field, (name, n, jump, r, start) in zip(fields, notebook_alexnet.table, strict=True):
        for axis in (field.height, field.width):
            assert (field.name, axis.size, axis.jump, axis.receptive, axis.start) == (name, n, jump, r, start)


def test_notebook_units_exactly(notebook_specs, notebook_alexnet):
    fields = analyse_layers(notebook_specs, (227, 227), Fraction(1))
    for name, (start, center, end) in notebook_alexnet.units.items():
        unit = unit_field(fields, name, 1, 1, (227, 227), Fraction(1))
        for span in (unit.vertical, unit.horizontal):
            assert (span.start, span.center, span.end) == (start, center, end)
    conv2 = unit_field(fields, "conv2", 1, 1, (227, 227), Fraction(1))
    # Clipped to the image [0.5, 227.5]: 0.5 .. 43.5, pixels 0..42 (0-based).
    assert (conv2.vertical_clipped.start, conv2.vertical_clipped.end) == (0.5, 43.5)
    assert (conv2.vertical.first, conv2.vertical.last) == (-8, 42)
    assert (conv2.vertical_clipped.first, conv2.vertical_clipped.last) == (0, 42)
    assert conv2.vertical_clipped.center == 22.0
    assert conv2.rows == conv2.columns == (0, 42)


def test_effective_padding_is_the_sum_of_paddings_times_jumps(notebook_specs):
    fields = analyse_layers(notebook_specs, (227, 227), Fraction(1))
    # Araujo et al.: P = sum_l p_l * prod_{i<l} s_i: conv2 2*8, conv3..5 1*16 each.
    assert [int(f.height.effective_padding(Fraction(1))) for f in fields] == [
        0,
        0,
        0,
        16,
        16,
        32,
        48,
        64,
        64,
        64,
        64,
    ]


def test_default_origin_shifts_start_by_half_a_pixel(notebook_specs):
    fields = analyse_layers(notebook_specs, (227, 227), Fraction(1, 2))
    assert [float(f.height.start) for f in fields][:3] == [0.5, 5.5, 9.5]


def brute_force_support(specs, size, x_index):
    """First and last input index under output unit ``x_index`` of a 1-D chain, by enumerating every tap.

    Padded positions are followed like image positions: this is the unclipped field."""
    reach = {x_index}
    sizes = [size]
    windows = []
    for kernel, stride, dilation, before, after, ceil in specs:
        w = Window(kernel, stride, dilation, before, after, ceil)
        windows.append(w)
        sizes.append(output_size(sizes[-1], w))
    for w in reversed(windows):
        reach = {i * w.stride - w.pad_before + t * w.dilation for i in reach for t in range(w.kernel)}
    return min(reach), max(reach)


@pytest.mark.parametrize(
    "chain",
    [
        [(3, 2, 1, 1, 1, False), (3, 1, 2, 2, 2, False), (5, 3, 1, 0, 2, False)],
        [(7, 2, 1, 3, 3, False), (3, 2, 1, 1, 1, True), (1, 2, 1, 0, 0, False), (3, 1, 3, 3, 3, False)],
        [(2, 2, 1, 0, 0, True), (4, 3, 2, 1, 0, False)],
    ],
)
def test_unit_spans_match_brute_force(chain):
    size = 53
    specs = [
        LayerSpec(f"l{i}", "conv", (k, k), (s, s), (d, d), (b, a, b, a), ceil)
        for i, (k, s, d, b, a, ceil) in enumerate(chain)
    ]
    fields = analyse_layers(specs, (size, size), Fraction(1, 2))
    for x in range(fields[-1].width.size):
        unit = unit_field(fields, fields[-1].name, x, 0, (size, size), Fraction(1, 2))
        assert (unit.horizontal.first, unit.horizontal.last) == brute_force_support(chain, size, x)


def test_same_padding_and_output_sizes():
    assert same_padding(224, Window(7, 2)) == (2, 3)
    assert same_padding(5, Window(3, 1)) == (1, 1)
    assert output_size(112, Window(3, 2, 1, 0, 0, ceil_mode=True)) == 56
    assert output_size(112, Window(3, 2, 1, 0, 0, ceil_mode=False)) == 55
    # PyTorch drops a last window that would start in the trailing padding.
    assert output_size(5, Window(2, 2, 1, 1, 1, ceil_mode=True)) == 3
    specs = [LayerSpec("c", "conv", (7, 3), (2, 1), padding="same")]
    field = analyse_layers(specs, (224, 10), Fraction(1, 2))[-1]
    assert (field.height.size, field.width.size, field.padding) == (112, 10, (2, 3, 1, 1))


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (LayerSpec("c", kernel=(0, 3)), "layers[0].kernel", "kernel must be >= 1"),
        (LayerSpec("c", kernel=(3, 3), stride=(1, 0)), "layers[0].stride", "stride must be >= 1"),
        (LayerSpec("c", kernel=(3, 3), dilation=(-1, 1)), "layers[0].dilation", "dilation"),
        (LayerSpec("c", kernel=(3, 3), padding=(0, -1, 0, 0)), "layers[0].padding", "padding must be >= 0"),
        (LayerSpec("c", kernel=(40, 3)), "layers[0].kernel", "exceeds the padded input"),
        (LayerSpec("input", kernel=(3, 3)), "layers[0].name", "duplicate"),
        (LayerSpec("", kernel=(3, 3)), "layers[0].name", "needs a name"),
        (LayerSpec("c", kernel=(3, MAX_WINDOW + 1)), "layers[0].kernel", f"kernel must be <= {MAX_WINDOW}"),
        (LayerSpec("c", kernel=(1, 1), stride=(2**40, 1)), "layers[0].stride", "stride must be <="),
        (LayerSpec("c", kernel=(3, 3), dilation=(1, 2**21)), "layers[0].dilation", "dilation must be <="),
        (LayerSpec("c", kernel=(1, 1), padding=(0, 10**7, 0, 0)), "layers[0].padding", "padding must be <="),
    ],
)
def test_invalid_layers_name_the_field(spec, field, words):
    with pytest.raises(InvalidSpec) as error:
        analyse_layers([spec], (32, 32), Fraction(1, 2))
    assert error.value.field == field and words in error.value.message


def test_unit_outside_layer_is_rejected(notebook_specs):
    fields = analyse_layers(notebook_specs, (227, 227), Fraction(1))
    with pytest.raises(InvalidSpec, match="x=55 is outside layer 'conv1'"):
        unit_field(fields, "conv1", 55, 0, (227, 227), Fraction(1))


def test_pixels_a_stride_never_reads_are_not_connected():
    # 10 pixels, kernel 3 stride 2 without padding: windows 0-2, 2-4, 4-6, 6-8; pixel 9 is never read.
    fields = analyse_layers([LayerSpec("c", "conv", (3, 3), (2, 2))], (10, 10), Fraction(1, 2))
    unit = unit_field(fields, "c", 3, 3, (10, 10), Fraction(1, 2))
    assert (unit.horizontal.first, unit.horizontal.last, unit.columns) == (6, 8, (6, 8))
    deeper = analyse_layers(
        [LayerSpec("c", "conv", (3, 3), (2, 2)), LayerSpec("d", "conv", (3, 3), padding=(1, 1, 1, 1))],
        (10, 10),
        Fraction(1, 2),
    )
    last = unit_field(deeper, "d", 3, 3, (10, 10), Fraction(1, 2))
    # Unclipped the field runs to pixel 10; connected are 4..8 (pixel 9 is never read, 10 is padding).
    assert (last.horizontal.first, last.horizontal.last, last.columns) == (4, 10, (4, 8))


def test_jump_and_receptive_size_must_fit_in_int64():
    stride = [LayerSpec(f"s{i}", "conv", (1, 1), (MAX_WINDOW, MAX_WINDOW)) for i in range(4)]
    with pytest.raises(InvalidSpec, match="the jump reaches 1208925819614629174706176") as error:
        analyse_layers(stride, (4, 4), Fraction(1, 2))
    assert error.value.field == "layers[3].stride" and "layer 's3' (layers[3]) along the height" in str(
        error.value
    )
    wide = [*stride[:3], LayerSpec("k", "conv", (9, 9), padding=(4, 4, 4, 4))]
    with pytest.raises(InvalidSpec, match="receptive size reaches") as error:
        analyse_layers(wide, (4, 4), Fraction(1, 2))
    assert error.value.field == "layers[3].kernel"
    fits = analyse_layers(stride[:3], (4, 4), Fraction(1, 2))[-1]
    assert fits.height.jump == 2**60
