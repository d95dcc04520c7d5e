"""The SDK against an in-process VisionService: ComputeReceptiveField, every option and error path."""

import io
import json
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError
from nnprobe.vision import Layer


@pytest.fixture(scope="module")
def notebook_layers(notebook_alexnet):
    """The notebook's layer list as the SDK takes it (pool layers marked as such)."""
    return [
        Layer(name, kernel, stride, padding, kind="pool" if name.startswith("pool") else "conv")
        for name, kernel, stride, padding in notebook_alexnet.layers
    ]


def test_notebook_table_through_the_sdk(vision, notebook_layers, notebook_alexnet):
    result = vision.compute_receptive_field(
        notebook_layers,
        input_size=notebook_alexnet.input_size,
        first_pixel_center=notebook_alexnet.first_pixel_center,
        units=[(name, 1, 1) for name in notebook_alexnet.units],
        verify=True,
    )
    rows = [
        (f.name, f.height.size, f.height.jump, f.height.receptive_size, f.height.start) for f in result.layers
    ]
    assert rows == notebook_alexnet.table
    assert [f.width == f.height for f in result.layers] == [True] * 11
    assert result.end_point == "fc7-conv" and result.first_pixel_center == 1.0
    for unit in result.units:
        for interval in (unit.vertical, unit.horizontal):
            assert (interval.start, interval.center, interval.end) == notebook_alexnet.units[unit.layer]
        assert unit.verification.matches and unit.verification.rows == unit.rows
    conv2 = result.units[2]
    assert (conv2.vertical_clipped.start, conv2.vertical_clipped.end, conv2.rows) == (0.5, 43.5, (0, 42))
    assert result.verified


def test_padding_forms_end_point_and_default_origin(vision):
    layers = [
        Layer("a", (7, 3), (2, 1), "same"),
        Layer("b", 3, 2, (0, 1, 1, 0), kind="pool", ceil_mode=True),
        Layer("c", 3, 1, "valid", dilation=2),
    ]
    result = vision.compute_receptive_field(layers, input_size=(32, 20), end_point="b", verify=True)
    a, b = result.layer("a"), result.layer("b")
    assert a.padding == (2, 3, 1, 1) and (a.height.size, a.width.size) == (16, 20)
    assert (b.height.size, b.width.size, b.height.jump, b.width.jump) == (8, 10, 4, 2)
    assert (b.height.receptive_size, b.width.receptive_size) == (11, 5)
    assert [f.name for f in result.layers] == ["input", "a", "b"] and result.end_point == "b"
    assert result.first_pixel_center == 0.5 and result.layers[0].height.start == 0.5
    assert result.units[0].layer == "b" and result.units[0].verification.matches  # centre unit by default


@pytest.mark.parametrize(
    ("model", "size", "units"),
    [
        ("resnet18", 48, [("conv5", 0, 0), ("layer2", 5, 2), ("maxpool", 11, 0)]),
        ("inception_v3", 79, [("Mixed_5b", 0, 0), ("Mixed_7c", 0, 0), ("Conv2d_4a_3x3", 13, 13)]),
        ("googlenet", 64, [("inception3a", 7, 0), ("inception5b", 1, 1)]),
        ("densenet121", 40, [("features.denseblock2", 0, 4), ("features.transition1", 4, 4)]),
        ("alexnet", 80, [("features.5", 1, 3), ("features.12", 0, 0)]),
    ],
)
def test_verify_on_torchvision_models(vision, model, size, units):
    result = vision.compute_receptive_field(model=model, input_size=size, units=units, verify=True)
    assert result.verified and result.model == model
    for unit in result.units:
        assert unit.verification.matches
        assert (unit.verification.rows, unit.verification.columns) == (unit.rows, unit.columns)


def test_model_defaults(vision):
    result = vision.compute_receptive_field(model="resnet50")
    assert result.input_size == (224, 224) and result.end_point == "layer4_2_relu_2"
    last = result.layers[-1]
    assert (
        last.height.size,
        last.height.jump,
        last.height.receptive_size,
        last.height.effective_padding,
    ) == (
        7,
        32,
        427,
        213.0,
    )
    assert result.units == [] and not result.verified and result.plot_png == b""
    assert vision.compute_receptive_field(model="inception_v3").input_size == (299, 299)


def test_effective_field_is_deterministic_and_inside_the_field(vision):
    kwargs = dict(
        model="resnet18", input_size=40, effective_field=True, erf_samples=3, erf_seed=5, model_seed=2
    )
    first = vision.compute_receptive_field(**kwargs)
    second = vision.compute_receptive_field(**kwargs)
    assert first.raw.SerializeToString() == second.raw.SerializeToString()
    erf = first.effective_field
    assert erf.gradient_map.shape == (40, 40) and erf.gradient_map.dtype == np.float64
    assert (erf.layer, erf.x, erf.y, erf.num_samples) == ("layer4_1_relu_1", 1, 1, 3)
    assert erf.mass_inside_field == 1.0 and erf.theoretical_pixels == 40 * 40
    # Recompute the summary from the returned map.
    m = erf.gradient_map
    rows = np.arange(40)
    mean_row = (m.sum(1) / m.sum()) @ rows
    assert erf.center_vertical == pytest.approx(0.5 + mean_row, abs=1e-12)
    assert erf.sigma_height == pytest.approx(
        np.sqrt((m.sum(1) / m.sum()) @ (rows - mean_row) ** 2), abs=1e-12
    )
    ordered = np.sort(m, axis=None)[::-1]
    needed = int(np.argmax(np.cumsum(ordered) >= 0.95 * m.sum())) + 1
    assert erf.pixels_for_95_percent == needed and erf.share_for_95_percent == needed / 1600
    other = vision.compute_receptive_field(**{**kwargs, "erf_seed": 6}).effective_field
    assert not np.array_equal(other.gradient_map, erf.gradient_map)


def test_effective_field_of_a_uniform_chain_is_exact(vision):
    # Two 3-tap averaging pools: the gradient of the centre unit is the 5-tap triangle (1,2,3,2,1)/9 per
    # axis, whatever the inputs.
    layers = [Layer("p1", 3, 1, 0, kind="pool"), Layer("p2", 3, 1, 0, kind="pool")]
    result = vision.compute_receptive_field(layers, input_size=9, effective_field=True, erf_samples=2)
    erf = result.effective_field
    tri = np.array([0, 0, 1, 2, 3, 2, 1, 0, 0]) / 9
    np.testing.assert_allclose(erf.gradient_map, np.outer(tri, tri), rtol=1e-6, atol=1e-12)  # float32
    assert erf.sigma_height == pytest.approx(np.sqrt(2 * (1 * 4 + 2 * 1) / 9), rel=1e-6)
    assert erf.center_vertical == pytest.approx(4.5, abs=1e-6) and erf.theoretical_pixels == 25
    assert erf.pixels_for_95_percent == 21  # all but the four corners (1/81 each) hold 77/81 > 95%


def test_plot_is_a_png_on_a_canvas_or_an_image(vision, notebook_layers):
    from PIL import Image

    canvas = vision.compute_receptive_field(
        notebook_layers[:3], input_size=227, units=[("conv2", 1, 1)], plot=True
    )
    assert canvas.plot_png.startswith(b"\x89PNG")
    picture = np.zeros((30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    on_image = vision.compute_receptive_field(
        notebook_layers[:1], image=buffer.getvalue(), units=[("conv1", 2, 1)]
    )
    assert on_image.input_size == (30, 40) and on_image.plot_png.startswith(b"\x89PNG")
    raw = vision.compute_receptive_field(notebook_layers[:1], image=picture, units=[("conv1", 2, 1)])
    assert raw.plot_png == on_image.plot_png


def expect(vision, code, field, words, *args, **kwargs):
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(*args, **kwargs)
    error = caught.value
    assert error.code == code, error
    assert words in error.message, error.message
    if field is not None:
        assert [v.field for v in error.field_violations] == [field], error
    return error


INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_errors_in_layer_lists(vision):
    expect(vision, INVALID, "layers", "exactly one of", input_size=8)
    expect(vision, INVALID, "layers", "exactly one of", [Layer("a", 3)], model="resnet18", input_size=8)
    expect(vision, INVALID, "input_size", "is required", [Layer("a", 3)])
    expect(
        vision,
        INVALID,
        "layers[1].kernel",
        "kernel must be >= 1",
        [Layer("a", 3), Layer("b", 0)],
        input_size=8,
    )
    expect(vision, INVALID, "layers[0].stride", "stride must be >= 1", [Layer("a", 3, (1, 0))], input_size=8)
    expect(vision, INVALID, "layers[0].padding", "padding must be >= 0", [Layer("a", 3, 1, -1)], input_size=8)
    expect(
        vision,
        INVALID,
        "layers[1].kernel",
        "layer 'b' (layers[1]) along the height: the window extent 5",
        [Layer("a", 3, 2), Layer("b", 5)],
        input_size=8,
    )
    expect(vision, INVALID, "layers[1].name", "duplicate", [Layer("a", 3), Layer("a", 1)], input_size=8)
    expect(vision, INVALID, "input_size.height", "must be positive", [Layer("a", 3)], input_size=(0, 4))
    expect(
        vision, INVALID, "units[0].layer", "no layer 'z'", [Layer("a", 3)], input_size=8, units=[("z", 0, 0)]
    )
    expect(
        vision, INVALID, "units[0].x", "x=6 is outside", [Layer("a", 3)], input_size=8, units=[("a", 6, 0)]
    )
    expect(
        vision, INVALID, "units[0].y", "y=-1 is outside", [Layer("a", 3)], input_size=8, units=[("a", 0, -1)]
    )
    expect(vision, INVALID, "end_point", "no layer 'q'", [Layer("a", 3)], input_size=8, end_point="q")
    expect(
        vision,
        INVALID,
        "first_pixel_center",
        "finite",
        [Layer("a", 3)],
        input_size=8,
        first_pixel_center=np.nan,
    )
    expect(
        vision,
        INVALID,
        "plot.image.encoded",
        "is not a readable image",
        [Layer("a", 3)],
        image=b"not an image",
    )
    expect(
        vision,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "effective_field.num_samples",
        "the limit is 256",
        [Layer("a", 3)],
        input_size=8,
        effective_field=True,
        erf_samples=1000,
    )
    expect(
        vision,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "input_size",
        "at most",
        [Layer("a", 3)],
        input_size=2000,
        verify=True,
    )


def test_errors_with_models(vision):
    error = expect(
        vision, grpc.StatusCode.NOT_FOUND, "model.name", "unknown model 'resnet5'", model="resnet5"
    )
    assert "inception_v3" in error.message
    expect(vision, INVALID, "model.name", "must name a model", model=" ")
    expect(
        vision,
        grpc.StatusCode.FAILED_PRECONDITION,
        "model.name",
        "broadcasts the 1 x 1 map",
        model="efficientnet_b0",
        input_size=64,
        strict=True,
    )
    expect(
        vision,
        grpc.StatusCode.FAILED_PRECONDITION,
        "model.name",
        "misaligned branches at node",
        model="resnet50d",
        input_size=64,
        strict=True,
    )
    expect(vision, INVALID, "model.onnx", "is not an ONNX model", onnx=b"not a model", input_size=8)
    expect(
        vision,
        grpc.StatusCode.FAILED_PRECONDITION,
        "effective_field.weights",
        "random weights need a named architecture",
        onnx=_onnx_chain(),
        effective_field=True,
        erf_weights="random",
    )
    expect(vision, INVALID, "input_size", "exceeds the padded input", model="inception_v3", input_size=40)
    expect(vision, INVALID, "end_point", "no layer 'layer9'", model="resnet18", end_point="layer9")
    expect(
        vision,
        INVALID,
        "units[0].layer",
        "is not on the way to the end point",
        model="resnet18",
        end_point="layer1",
        units=[("layer3", 0, 0)],
    )


def test_cli_layer_syntax_table_json_and_plot(vision, notebook_layers, capsys, tmp_path):
    from nnprobe.cli import main
    from nnprobe.cli.vision import parse_layer

    assert parse_layer("pool1:k3,s2") == Layer("pool1", 3, 2, kind="pool")
    assert parse_layer("c:k3x5,s1x2,p0-1-2-3,d2,other,ceil") == Layer(
        "c", (3, 5), (1, 2), (0, 1, 2, 3), 2, kind="other", ceil_mode=True
    )
    assert parse_layer("c:k7,psame").padding == "same"
    with pytest.raises(ValueError, match="needs a kernel"):
        parse_layer("c:s2")
    tokens = [f"{f.name}:k{f.kernel},s{f.stride},p{f.padding}" for f in notebook_layers]
    common = ["rf", "--address", vision.address, "--layers", *tokens, "--input-size", "227", "--origin", "1"]
    assert main([*common, "--unit", "conv2:1,1", "--verify", "--plot", str(tmp_path / "rf.png")]) == 0
    out = capsys.readouterr().out
    assert "fc6-conv  conv      1    32        355    114            64" in out
    assert "conv2 (1,1)  -7.5 / 18 / 43.5" in out and "yes" in out
    assert (tmp_path / "rf.png").read_bytes().startswith(b"\x89PNG")
    assert main([*common, "--unit", "pool2:1,1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["units"][0]["vertical"] == {"start": 0.5, "center": 34.0, "end": 67.5}
    assert main(["rf", "--address", vision.address, "--model", "resnet5"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


# -- concurrency, limits, deadlines -------------------------------------------------------------------
ORIGINAL_MODULE_CALL = torch.nn.Module.__call__
ORIGINAL_MODULE_GETATTR = torch.nn.Module.__getattr__


@pytest.fixture
def traces_in_this_process(monkeypatch):
    """Every torch.fx trace started in this process (the in-process server's threads included)."""
    from torch.fx._symbolic_trace import Tracer

    calls = []
    original = Tracer.trace

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tracer, "trace", spy)
    return calls


def test_concurrent_model_requests_never_trace_in_the_server(vision, traces_in_this_process):
    requests = {
        "vgg11": dict(model="vgg11"),
        "mobilenet_v2": dict(model="mobilenet_v2", input_size=96),
        "googlenet": dict(model="googlenet", input_size=64, units=[("inception4a", 1, 1)]),
        "densenet121": dict(model="densenet121", input_size=64),
        "resnet18 verify": dict(model="resnet18", input_size=48, units=[("layer2", 5, 2)], verify=True),
        "alexnet erf": dict(
            model="alexnet", input_size=80, effective_field=True, erf_samples=2, model_seed=3
        ),
    }
    results, errors = {}, {}

    def call(key):
        try:
            results[key] = vision.compute_receptive_field(**requests[key])
        except Exception as error:  # reported below with its request
            errors[key] = error

    threads = [threading.Thread(target=call, args=(key,)) for key in requests]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == {}
    assert traces_in_this_process == [], "torch.fx traced in the server process"
    assert torch.nn.Module.__call__ is ORIGINAL_MODULE_CALL
    assert torch.nn.Module.__getattr__ is ORIGINAL_MODULE_GETATTR
    assert torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3))(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 6, 6)
    assert results["resnet18 verify"].verified
    assert results["vgg11"].layers[-1].height.receptive_size == 150  # 3x3 convs and 2x2 pools by hand
    for key, request in requests.items():  # the same answers, byte for byte, one at a time
        again = vision.compute_receptive_field(**request)
        assert again.raw.SerializeToString() == results[key].raw.SerializeToString(), key


def png_header(width, height):
    """A small 1-bit PNG whose header announces width x height (all zeros, so it compresses well)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * ((1 + (width + 7) // 8) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_oversized_requests_are_refused_with_their_field(vision):
    # Above PIL's own bomb limit, and below it. The image data is a stub, so only a refusal from the header
    # gives this answer (decoding would fail as corrupt).
    for width, height in ((20000, 10000), (5000, 4000)):
        expect(
            vision,
            EXHAUSTED,
            "plot.image.encoded",
            "too large" if width == 20000 else "the limit is",
            [Layer("a", 3)],
            image=png_header(width, height),
        )
    expect(
        vision,
        EXHAUSTED,
        "layers[0].kernel",
        "too large for the back-propagation check",
        [Layer("a", 60001, 1, 30000)],
        input_size=8,
        verify=True,
    )
    expect(
        vision,
        EXHAUSTED,
        "layers[0].padding",
        "padded input of 2000008 x 2000008",
        [Layer("a", 1, 1, 10**6)],
        input_size=8,
        verify=True,
    )
    expect(
        vision,
        EXHAUSTED,
        "layers[1].kernel",
        "multiply-adds",
        [Layer("a", 1), Layer("b", 301, 1, 150)],
        input_size=1000,
        effective_field=True,
    )
    expect(
        vision,
        INVALID,
        "layers[0].stride",
        "stride must be <= 1048576",
        [Layer("a", 1, 2**40), Layer("b", 1, 2**40)],
        input_size=4,
    )
    expect(
        vision,
        INVALID,
        "layers[3].stride",
        "more than a 64-bit integer holds",
        [Layer(f"s{i}", 1, 2**20) for i in range(4)],
        input_size=4,
    )
    expect(
        vision,
        grpc.StatusCode.FAILED_PRECONDITION,
        "end_point",
        "choose an earlier end_point",
        model="resnet18",
        end_point="fc",
    )


def test_many_units_with_a_plot_are_bounded(vision):
    layers = [Layer("c", 3)]
    units = [("c", i % 60, (i // 60) % 60) for i in range(1024)]
    result = vision.compute_receptive_field(layers, input_size=64, units=units, plot=True)
    assert len(result.units) == 1024
    assert result.plot_png.startswith(b"\x89PNG")
    expect(
        vision,
        EXHAUSTED,
        "units",
        "asks for 1025 units; the limit is 1024",
        layers,
        input_size=64,
        units=[*units, ("c", 0, 0)],
        plot=True,
    )


def test_deadline_stops_the_server_work(vision, caplog, monkeypatch):
    """An effective field of 256 samples stops at the client's deadline, part of the way through, and the
    request log says DEADLINE_EXCEEDED."""
    import logging
    import re

    from nnprobe_services.errors import Cancelled

    stops: list[str] = []
    original = Cancelled.__init__

    def recording_init(self, *args, **kwargs):
        stops.append(str(args[0]) if args else "")
        original(self, *args, **kwargs)

    vision.compute_receptive_field(model="resnet18", input_size=224)  # traced and cached beforehand
    caplog.set_level(logging.INFO, logger="nnprobe.requests")
    monkeypatch.setattr(Cancelled, "__init__", recording_init)
    with pytest.raises(NnprobeError) as info:
        vision.compute_receptive_field(
            model="resnet18", input_size=224, effective_field=True, erf_samples=256, timeout=1.5
        )
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 120  # hang guard only
    while not (stops and "ComputeReceptiveField DEADLINE_EXCEEDED" in caplog.text):
        assert time.monotonic() < deadline, (stops, caplog.text)
        time.sleep(0.05)
    done, total = map(int, re.search(r"stopped after (\d+) of (\d+) samples", stops[-1]).groups())
    assert total == 256 and done < total


def test_verify_follows_the_taps_of_a_dilated_kernel(vision):
    # Kernel 3, dilation 2, padding 1 on 8 pixels: unit (0, 0) reads pixels -1 (padding), 1 and 3.
    result = vision.compute_receptive_field(
        [Layer("c", 3, 1, 1, dilation=2)], input_size=(8, 8), units=[("c", 0, 0)], verify=True
    )
    (unit,) = result.units
    assert (unit.rows, unit.columns) == ((1, 3), (1, 3))
    assert (unit.verification.rows, unit.verification.columns) == ((1, 3), (1, 3))
    assert unit.verification.matches and result.verified


def _onnx_chain() -> bytes:
    """A small network exported to ONNX: conv 3x3, reflect padding, max-pool 2, depthwise conv 5x5."""
    import torch
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReflectionPad2d(1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 5, padding=2, groups=4)
    )
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 20, 20),), buffer, dynamo=False, opset_version=17)
    return buffer.getvalue()


def test_onnx_model_is_analysed_and_verified(vision, tmp_path):
    path = tmp_path / "chain.onnx"
    path.write_bytes(_onnx_chain())
    result = vision.compute_receptive_field(onnx=path, verify=True, units=[("/3/Conv", 0, 0)])
    assert result.capture == "onnx" and result.input_size == (20, 20) and result.verified
    end = result.layer(result.end_point)
    # conv 3 (18 wide, r 3), pad 1 (20), pool 2 s 2 (10, r 4, j 2), conv 5 (r 4 + 4 * 2 = 12): closed form.
    assert (end.height.receptive_size, end.height.jump, end.height.size) == (12, 2, 10)
    [unit] = result.units
    assert unit.verification.rows == unit.rows


def test_global_context_and_misaligned_merges_are_answers(vision):
    se = vision.compute_receptive_field(model="efficientnet_b0", input_size=64, verify=True)
    assert se.verified and se.global_context == "mul" and se.global_context_module == "blocks.0.0.se"
    assert se.layer(se.end_point).height.receptive_size == 851 and se.model_final_stride == 32
    assert se.raw.layers[-1].global_context == "mul" and se.capture == "torch.export"
    shifted = vision.compute_receptive_field(model="resnet50d", input_size=64, verify=True)
    assert shifted.verified and len(shifted.misaligned_merges) == 6
    # Each downsampling block's shortcut pools 2 x 2 with stride 2 on a map of jump j: its centres move by
    # (2 - 1) / 2 * j against the 3 x 3, padding 1 convolution's; j = 4, 8, 16 in layer2..layer4.
    assert sorted(abs(m[4]) for m in shifted.misaligned_merges) == [2, 2, 4, 4, 8, 8]
    assert {m[0] for m in shifted.misaligned_merges} <= {f.name for f in shifted.layers}
