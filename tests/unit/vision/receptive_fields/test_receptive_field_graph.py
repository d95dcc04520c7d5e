"""Traced models: published receptive fields, branch alignment, unmappable operations, the proof."""

import copy
import os
import subprocess
import threading
import time
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import ResourceExhausted, Unavailable
from nnprobe_services.vision.receptive_fields import empirical as rf_empirical
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.arithmetic import (
    InvalidSpec,
    UnknownName,
    Unsupported,
)
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.frontends import trace_worker as rf_trace_worker
from torch import nn
from torch.fx._symbolic_trace import Tracer

CPU = torch.device("cpu")

HALF = Fraction(1, 2)


@pytest.mark.parametrize(
    ("name", "size", "end", "out", "receptive", "padding"),
    [
        # Araujo, Norris & Sim (Distill 2019), table of popular networks: r, effective stride 32, padding.
        ("vgg16", 224, "features_30", 7, 212, 90),
        ("inception_v3", 299, "cat_14", 8, 1311, 618),
        # torchvision's own architectures (they differ from the TF-slim ResNets of the table).
        ("alexnet", 224, "features_12", 6, 195, 66),
        ("resnet18", 224, "layer4_1_relu_1", 7, 435, 217),
        ("resnet50", 224, "layer4_2_relu_2", 7, 427, 213),
    ],
)
def test_published_receptive_fields(name, size, end, out, receptive, padding):
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    last = graph.fields[-1]
    assert graph.end_point == last.name == end
    for axis in (last.height, last.width):
        assert (axis.size, axis.jump, axis.receptive, axis.effective_padding(HALF)) == (
            out,
            32,
            receptive,
            padding,
        )


def test_stage_aliases_and_module_paths_resolve():
    graph = rf_graph.analyse_model("resnet50", (224, 224), HALF, None)
    assert graph.resolve("conv5", "units") == graph.resolve("layer4", "units") == "layer4_2_relu_2"
    assert graph.resolve("layer1.0.conv1", "units") == "layer1_0_conv1"
    assert graph.resolve("conv1", "units") == "conv1" and "conv1" not in rf_graph.RESNET_STAGES
    with pytest.raises(InvalidSpec, match="no layer 'layer9'") as error:
        graph.resolve("layer9", "units[0].layer")
    assert error.value.field == "units[0].layer"


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(UnknownName, match="resnet50, resnet101") as error:
        rf_graph.build("resnet5000")
    assert error.value.field == "model.name"


class TwoBranches(nn.Module):
    """x -> a(x) + b(x), or a(x) @ b(x) (an operation without a receptive field)."""

    def __init__(self, a: nn.Module, b: nn.Module, product: bool = False):
        super().__init__()
        self.a, self.b, self.product = a, b, product

    def forward(self, x):
        return self.a(x) @ self.b(x) if self.product else self.a(x) + self.b(x)


def analyse(module, end_point=None, strict=False):
    return rf_graph.analyse_module(module, "two", (16, 16), HALF, end_point, channels=1, strict=strict)


def test_aligned_branches_take_the_largest_field():
    graph = analyse(TwoBranches(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 5, padding=2)))
    assert [(f.name, f.kind, f.height.receptive, f.inputs) for f in graph.fields] == [
        ("x", "input", 1, ()),
        ("a", "conv", 3, ("x",)),
        ("b", "conv", 5, ("x",)),
        ("add", "merge", 5, ("a", "b")),
    ]
    assert graph.misaligned == [] and graph.global_context == ""


def test_misaligned_branches_give_the_union_or_say_where_when_strict():
    # Both give 8 x 8 from 16 x 16, but a's units are centred on start 0.5, b's on 1.0.
    module = TwoBranches(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 2, stride=2))
    graph = analyse(module)
    end = graph.fields[-1]
    # a: unit 0 spans [-1, 2]; b: [0, 2]; the union [-1, 2] has 3 pixels centred on 0.5.
    assert (end.height.receptive, end.height.start, end.height.jump) == (3, HALF, 2)
    assert [(m.node, m.axis, m.reference, m.path, m.offset) for m in graph.misaligned] == [
        ("add", "height", "a", "b", HALF),
        ("add", "width", "a", "b", HALF),
    ]
    with pytest.raises(Unsupported) as error:
        analyse(module, strict=True)
    assert "misaligned branches at node 'add'" in error.value.message
    assert "the start is 0.5 through a but 1.0 through b" in error.value.message


def test_unmappable_operation_is_named():
    module = TwoBranches(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1), product=True)
    with pytest.raises(Unsupported, match="matmul \\(node 'matmul'\\) cannot be mapped"):
        analyse(module)
    # An end point before the unmappable node is fine.
    assert analyse(module, "a").end_point == "a"


def test_global_context_is_reported_beside_the_local_field():
    graph = rf_graph.analyse_model("efficientnet_b0", (64, 64), HALF, None)
    end = graph.fields[-1]
    # The local field of EfficientNet-B0 (its spatial paths alone), as quoted for the family.
    assert (end.height.jump, end.height.receptive) == (32, 851)
    assert graph.global_context == "mul" and graph.global_context_module == "blocks.0.0.se"
    assert end.global_context == "mul"
    with pytest.raises(Unsupported, match="broadcasts the 1 x 1 map"):
        rf_graph.analyse_model("efficientnet_b0", (64, 64), HALF, None, strict=True)


def test_input_too_small_names_the_node():
    with pytest.raises(InvalidSpec, match="exceeds the padded input") as error:
        rf_graph.analyse_model("inception_v3", (40, 40), HALF, None)
    assert error.value.field == "input_size"


@pytest.mark.parametrize(("name", "size"), [("resnet18", 48), ("googlenet", 48), ("inception_v3", 79)])
def test_gradient_box_equals_connected_pixels(name, size):
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    end = graph.fields[-1]
    units = [(end.name, 0, 0), (end.name, end.width.size - 1, end.height.size // 2)]
    middle = graph.fields[len(graph.fields) // 3]
    units += [(middle.name, 0, middle.height.size - 1), (middle.name, middle.width.size // 2, 1)]
    probe, channels = rf_empirical.model_probe(
        name, [u[0] for u in units], torch.device("cpu"), weights="transparent", input_size=(size, size)
    )
    boxes = rf_empirical.gradient_boxes(
        probe, channels, (size, size), torch.device("cpu"), units, lambda: False
    )
    for (layer, x, y), box in zip(units, boxes, strict=True):
        unit = unit_field(graph.fields, layer, x, y, (size, size), HALF)
        assert (box.first_row, box.last_row, box.first_column, box.last_column) == (*unit.rows, *unit.columns)


def test_an_end_point_past_the_feature_maps_is_named_as_such():
    with pytest.raises(Unsupported, match="choose an earlier end_point") as error:
        rf_graph.analyse_model("resnet18", (224, 224), HALF, "fc")
    assert error.value.field == "end_point"


# -- tracing in a worker process --------------------------------------------------------------------
@pytest.fixture
def no_tracing_here(monkeypatch):
    """Records every torch.fx trace started in this process (any thread)."""
    calls = []
    original = Tracer.trace

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tracer, "trace", spy)
    yield calls
    assert calls == [], "torch.fx traced in the server process"


def test_models_are_traced_in_a_worker_process_only(no_tracing_here):
    capture, gm = rf_trace_worker.captured("vgg13", (64, 64))
    assert rf_trace_worker.captured("vgg13", (64, 64))[1] is gm and all(p.is_meta for p in gm.parameters())
    assert [n.name for n in capture.nodes][:3] == ["x", "features_0", "features_1"]
    assert rf_graph.analyse_model("vgg13", (64, 64), HALF, None).fields[-1].height.receptive == 156
    probe, channels = rf_empirical.model_probe(
        "vgg13", ["features_4"], CPU, weights="random", input_size=(64, 64)
    )
    assert channels == 3 and probe(torch.ones(1, 3, 64, 64))["features_4"].shape == (1, 64, 32, 32)
    assert all(p.is_meta for p in gm.parameters()), "the cached graph must stay untouched"
    for _ in range(2):  # the cached error comes back as the same exception, field included
        with pytest.raises(UnknownName, match="unknown model 'resnet5000'") as error:
            rf_graph.captured("resnet5000", (64, 64))
        assert error.value.field == "model.name"
    # ATen operations (which do not pickle) come back as themselves.
    targets = {n.target for n in rf_trace_worker.captured("inception_v3", (299, 299))[1].graph.nodes}
    assert torch.ops.aten.max_pool2d.default in targets


def test_concurrent_first_requests_trace_once(monkeypatch):
    rf_trace_worker.forget("vgg19")
    submitted = []
    original = rf_trace_worker._submit
    monkeypatch.setattr(rf_trace_worker, "_submit", lambda name: submitted.append(name) or original(name))
    results = [None] * 4

    def work(i):
        results[i] = rf_graph.captured("vgg19", (32, 32))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert submitted == [("vgg19", (32, 32))] and all(r is results[0] for r in results)
    assert results[0] is not None


def test_a_dead_worker_fails_one_request_and_is_replaced(monkeypatch):
    # A worker of its own (the shared one stays up), given tasks that import nothing heavy: the "model
    # name" is a shell command that kills the worker process, then one whose length is the answer.
    monkeypatch.setattr(rf_trace_worker, "_pool", None)
    monkeypatch.setattr(rf_trace_worker, "_task", os.system)
    try:
        with pytest.raises(
            rf_trace_worker.TracerUnavailable, match="stopped unexpectedly while tracing"
        ) as error:
            rf_trace_worker.traced("kill -9 $PPID")
        assert error.value.field == "model.name" and isinstance(error.value, Unavailable)
        assert rf_trace_worker._pool is None
        monkeypatch.setattr(rf_trace_worker, "_task", len)
        pool, future = rf_trace_worker._submit("four")  # the next request starts a new worker
        assert future.result(timeout=60) == 4 and rf_trace_worker._pool is pool
    finally:
        rf_trace_worker.shutdown()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.sampled_from([0, 30]), options=st.booleans())
def test_a_capture_over_the_time_limit_stops_the_worker_and_names_the_field(monkeypatch, seconds, options):
    """A task of its own worker that sleeps ``seconds`` (0, or far over a 1.5 s limit): the short one
    answers; the long one is stopped at the limit with RESOURCE_EXHAUSTED on ``model.options`` (a key with
    options) or ``model.name``, a request queued behind it is UNAVAILABLE, and the next request gets a new
    worker."""
    monkeypatch.setattr(rf_trace_worker, "_pool", None)
    monkeypatch.setattr(rf_trace_worker, "_task", subprocess.call)
    monkeypatch.setattr(rf_trace_worker, "CAPTURE_SECONDS", 1.5)
    # a key is (model, size[, options]); here it is a command line: sleep adds up its arguments
    key = ("sleep", str(seconds), "0") if options else ("sleep", str(seconds))
    try:
        rf_trace_worker._submit(["true"])[1].result(timeout=60)  # the worker is up: the limit times the task
        if seconds == 0:
            assert rf_trace_worker._trace_remote(key) == 0
            return
        queued: list[BaseException] = []
        behind = threading.Thread(
            target=lambda: _catch(queued, lambda: rf_trace_worker._trace_remote(["true"]))
        )
        started = time.monotonic()
        with pytest.raises(ResourceExhausted, match=r"took more than 1\.5 s and was stopped") as error:
            threading.Timer(0.3, behind.start).start()
            rf_trace_worker._trace_remote(key)
        assert time.monotonic() - started < 10
        assert error.value.field == ("model.options" if options else "model.name")
        behind.join(60)
        assert [type(e) for e in queued] == [rf_trace_worker.TracerUnavailable], [repr(e) for e in queued]
        assert rf_trace_worker._pool is None
        assert rf_trace_worker._submit(["false"])[1].result(timeout=60) == 1
    finally:
        rf_trace_worker.shutdown()


def _catch(caught: list[BaseException], call) -> None:
    try:
        call()
    except BaseException as error:
        caught.append(error)


# -- seeded random weights --------------------------------------------------------------------------
def test_seeded_random_weights_ignore_other_threads():
    """Two seeds on two threads, next to a thread that keeps using torch's global generator, give the
    bytes that sequential runs give."""
    layer = "layer1_0_relu"

    def run(seed):
        probe, channels = rf_empirical.model_probe(
            "resnet18", [layer], CPU, weights="random", seed=seed, input_size=(20, 20)
        )
        weights = b"".join(p.detach().numpy().tobytes() for p in probe.parameters())
        grad = rf_empirical.gradient_map(
            probe, channels, (20, 20), CPU, (layer, 2, 2), 3, seed, lambda: False, 2
        )
        return weights, grad.tobytes()

    expected = {seed: run(seed) for seed in (1, 2)}
    results = {}
    stop = threading.Event()

    def global_generator_user():
        while not stop.is_set():
            torch.manual_seed(0)
            torch.rand(1000)

    noise = threading.Thread(target=global_generator_user)
    workers = [threading.Thread(target=lambda s=s: results.__setitem__(s, run(s))) for s in (1, 2)]
    noise.start()
    [t.start() for t in workers]
    [t.join() for t in workers]
    stop.set()
    noise.join()
    assert results.keys() == expected.keys()
    for seed in expected:
        assert results[seed][0] == expected[seed][0], f"weights of seed {seed} changed"
        assert results[seed][1] == expected[seed][1], f"gradient map of seed {seed} changed"


def test_private_initialisation_is_pytorch_default():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 4, 1, bias=False),
        nn.Flatten(),
        nn.LayerNorm(4),
        nn.Linear(4, 2),
    )
    reference = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for module in reference.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    rf_empirical.initialise(model, 7)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name
    # Other modules fall back to their own reset_parameters, still determined by the seed.
    embeddings = [nn.Embedding(5, 3) for _ in range(2)]
    for e in embeddings:
        rf_empirical.initialise(e, 3)
    assert torch.equal(embeddings[0].weight, embeddings[1].weight)
