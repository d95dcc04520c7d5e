"""The receptive-field workflow as a plain function (no gRPC): the notebook's table and its proof, the
exact effective field of two averaging pools, the picture, its errors as domain errors naming their
fields, and stopping."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from nnprobe_services.errors import Cancelled, InvalidArgument, ResourceExhausted
from nnprobe_services.vision.images.decode import ImageInput
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import workflow as rf_request

CPU = torch.device("cpu")


def _never():
    return False


@pytest.fixture(scope="module")
def notebook_specs(notebook_alexnet):
    return [
        rf.LayerSpec(
            name,
            "pool" if name.startswith("pool") else "conv",
            (kernel, kernel),
            (stride, stride),
            padding=(padding,) * 4,
        )
        for name, kernel, stride, padding in notebook_alexnet.layers
    ]


def test_the_notebook_table_and_its_proof(notebook_specs, notebook_alexnet):
    size = notebook_alexnet.input_size
    request = rf_request.FieldRequest(
        origin=Fraction(notebook_alexnet.first_pixel_center),
        layers=notebook_specs,
        input_size=(size, size),
        units=[(name, 1, 1) for name in notebook_alexnet.units],
        verify=True,
    )
    result = rf_request.compute(request, CPU, _never)
    table = [
        (f.name, f.height.size, f.height.jump, f.height.receptive, float(f.height.start))
        for f in result.fields
    ]
    assert table == notebook_alexnet.table
    assert result.end_point == "fc7-conv" and result.input_size == (size, size)
    for unit in result.units:
        span = unit.vertical
        assert (float(span.start), float(span.center), float(span.end)) == notebook_alexnet.units[unit.layer]
    assert result.verified and [v.matches for v in result.verifications] == [True] * 4
    conv2 = result.verifications[2].box
    assert (conv2.first_row, conv2.last_row) == result.units[2].rows == (0, 42)  # clipped at the top edge
    assert result.effective is None and result.plot_png == b""


def test_two_averaging_pools_have_a_triangular_effective_field():
    pools = [rf.LayerSpec("p1", "pool", (3, 3), (1, 1)), rf.LayerSpec("p2", "pool", (3, 3), (1, 1))]
    request = rf_request.FieldRequest(
        layers=pools, input_size=(9, 9), effective=rf_request.EffectiveOptions(num_samples=2), plot=True
    )
    result = rf_request.compute(request, CPU, _never)
    assert result.effective is not None and result.effective.unit == ("p2", 2, 2)
    tri = np.array([0, 0, 1, 2, 3, 2, 1, 0, 0]) / 9  # (1, 2, 3, 2, 1) / 9 per axis, whatever the inputs
    np.testing.assert_allclose(
        result.effective.summary.gradient_map, np.outer(tri, tri), rtol=1e-6, atol=1e-12
    )
    assert result.effective.field.rows == result.effective.field.columns == (2, 6)
    assert [(u.layer, u.x, u.y) for u in result.units] == [("p2", 2, 2)]  # the centre unit, for the plot
    assert result.plot_png.startswith(b"\x89PNG")


def test_the_picture_sets_the_input_size():
    picture = np.zeros((30, 40, 3), np.uint8)
    request = rf_request.FieldRequest(
        layers=[rf.LayerSpec("c", kernel=(3, 3))],
        plot=True,
        picture=ImageInput(b"", picture, "plot.image.pixels"),
    )
    result = rf_request.compute(request, CPU, _never)
    assert result.input_size == (30, 40) and result.fields[-1].height.size == 28


@pytest.mark.parametrize(
    ("changes", "error", "field", "words"),
    [
        ({"input_size": None}, InvalidArgument, "input_size", "is required with `layers`"),
        (
            {"units": [("nope", 0, 0)]},
            InvalidArgument,
            "units[0].layer",
            "no layer 'nope'; the layers are input, c",
        ),
        ({"units": [("c", 6, 0)]}, InvalidArgument, "units[0].x", "x=6 is outside layer 'c'"),
        ({"end_point": "d"}, InvalidArgument, "end_point", "no layer 'd'"),
        ({"input_size": (4000, 4000), "max_elements": 1000}, ResourceExhausted, "input_size", "exceeds"),
        ({"input_size": (2000, 2000), "verify": True}, ResourceExhausted, "input_size", "at most 1048576"),
        ({"units": [("c", 0, 0)] * (rf.MAX_UNITS + 1)}, ResourceExhausted, "units", "the limit is 1024"),
        (
            {"picture": ImageInput(b"not an image", None, "plot.image.encoded")},
            InvalidArgument,
            "plot.image.encoded",
            "is not a readable image",
        ),
    ],
)
def test_errors_name_their_fields(changes, error, field, words):
    base = {"layers": [rf.LayerSpec("c", kernel=(3, 3))], "input_size": (8, 8), **changes}
    with pytest.raises(error) as caught:
        rf_request.compute(rf_request.FieldRequest(**base), CPU, _never)
    assert caught.value.field == field and words in caught.value.message, caught.value


def test_field_engine_errors_become_domain_errors():
    too_big = [rf.LayerSpec("c", kernel=(9, 9))]  # a 9 x 9 kernel on a 4 x 4 input without padding
    with pytest.raises(InvalidArgument) as caught:
        rf_request.compute(rf_request.FieldRequest(layers=too_big, input_size=(4, 4)), CPU, _never)
    assert caught.value.field is not None and caught.value.field.startswith("layers[0]")


def test_a_set_stop_signal_ends_the_proof_before_its_first_unit(notebook_specs):
    request = rf_request.FieldRequest(layers=notebook_specs[:2], input_size=(64, 64), verify=True)
    with pytest.raises(Cancelled, match="stopped after 0 of 1 units"):
        rf_request.compute(request, CPU, lambda: True)
