"""Token layers: a patch token keeps its patch's field through reshapes, permutes, a class token and linear
layers; attention and channel attention are global context, named, with the local field through the residual
paths. The boxes are held to torch.autograd through the real modules (positive weights where nothing else
mixes positions; attention or the global statistic held constant with ``detach`` where it does), never to the
engine's own twin."""

import copy
import io
from collections.abc import Callable
from fractions import Fraction

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.boxes import unit_field
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from torch import nn

HALF = Fraction(1, 2)


def box_of(grad: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row, first column, last column) of the non-zero entries of an (N, C, H, W)
    gradient."""
    mask = grad.abs().sum(dim=(0, 1)) != 0
    rows = torch.nonzero(mask.any(1)).flatten().tolist()
    cols = torch.nonzero(mask.any(0)).flatten().tolist()
    return (rows[0], rows[-1], cols[0], cols[-1]) if rows else (0, -1, 0, -1)


def gradient_box(module: Callable, size: int, channels: int, pick) -> tuple[int, int, int, int]:
    """The input-gradient box of ``pick(output)`` (a scalar) through ``module`` in float64."""
    x = torch.rand(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(pick(module(x)), x)
    return box_of(grad)


def analytic(graph, layer: str, x: int, y: int, size: int) -> tuple[int, int, int, int]:
    unit = unit_field(graph.fields, layer, x, y, (size, size), HALF)
    return (*unit.rows, *unit.columns)


# -- token reshapes: a property over patch embeddings and layout changes that only move axes --------------
class TokenNet(nn.Module):
    """conv -> flatten(2).transpose -> [split into heads and back] -> [unsqueeze/squeeze] -> [class token]
    -> positional embedding -> linear -> [back to (C, H, W) or (H, W, C)]."""

    def __init__(self, kernel: int, stride: int, grid: int, steps: frozenset, cls: bool, to_grid: str):
        super().__init__()
        self.steps, self.cls, self.to_grid = steps, cls, to_grid
        self.conv = nn.Conv2d(2, 4, kernel, stride=stride, bias=False)
        self.token = nn.Parameter(torch.ones(1, 1, 4))
        self.pos = nn.Parameter(torch.ones(1, grid + int(cls), 4))
        self.linear = nn.Linear(4, 4)
        with torch.no_grad():  # positive weights: nothing cancels
            for p in self.parameters():
                p.uniform_(0.5, 1.0)

    def forward(self, x):
        y = self.conv(x)
        h, w = y.shape[2:]
        t = y.flatten(2).transpose(1, 2)  # (1, h * w, 4)
        if "heads" in self.steps:
            t = t.reshape(1, h * w, 2, 2).permute(0, 2, 1, 3).transpose(1, 2).reshape(1, h * w, 4)
        if "unsqueeze" in self.steps:
            t = t.unsqueeze(1).permute(0, 2, 1, 3).squeeze(2)
        if self.cls:
            t = torch.cat([self.token.expand(1, 1, 4), t], dim=1)
        t = self.linear(t + self.pos)
        if self.to_grid and self.cls:
            t = t[:, 1:]
        if self.to_grid == "nchw":
            return t.transpose(1, 2).reshape(1, 4, h, w)
        if self.to_grid == "nhwc":
            return t.reshape(1, h, w, 4)
        return t


def unit_of(net: TokenNet, out: torch.Tensor, x: int, y: int, columns: int) -> torch.Tensor:
    """The test's own addressing of unit (x, y) in the real output (every channel summed)."""
    if net.to_grid == "nchw":
        return out[0, :, y, x].sum()
    if net.to_grid == "nhwc":
        return out[0, y, x, :].sum()
    return out[0, int(net.cls) + y * columns + x, :].sum()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kernel=st.integers(1, 4),
    stride=st.integers(1, 4),
    size=st.integers(6, 14),
    steps=st.frozensets(st.sampled_from(["heads", "unsqueeze"])),
    cls=st.booleans(),
    to_grid=st.sampled_from(["", "nchw", "nhwc"]),
    data=st.data(),
)
def test_token_reshapes_keep_each_patchs_field(kernel, stride, size, steps, cls, to_grid, data):
    side = (size - kernel) // stride + 1
    net = TokenNet(kernel, stride, side * side, steps, cls, to_grid).double()
    graph = rf_graph.analyse_module(
        copy.deepcopy(net).float(), "tokens", (size, size), HALF, None, channels=2
    )
    assert graph.global_context == ""
    x, y = data.draw(st.integers(0, side - 1)), data.draw(st.integers(0, side - 1))
    real = gradient_box(net, size, 2, lambda out: unit_of(net, out, x, y, side))
    assert analytic(graph, graph.end_point, x, y, size) == real
    # the patch's own box, in closed form
    assert real == (y * stride, y * stride + kernel - 1, x * stride, x * stride + kernel - 1)


# -- a tiny vision transformer written here ------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention; ``fused``: F.scaled_dot_product_attention, else matmul + softmax."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.hold = False  # the test's twin: the attention's result held constant

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1) @ v
        out = self.proj(out.transpose(1, 2).reshape(n, t, c))
        return out.detach() if self.hold else out


class Block(nn.Module):
    def __init__(self, dim: int, fused: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, 2, fused)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU())
        self.fc = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc(self.mlp(self.norm2(x)))


class TinyViT(nn.Module):
    """Patch embedding (4 x 4), class and distillation tokens, positional embedding, two blocks (one fused
    attention, one written out), a final norm and a class-token head."""

    def __init__(self, size: int = 16, patch: int = 4, dim: int = 8):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token, self.dist_token = (
            nn.Parameter(torch.zeros(1, 1, dim)),
            nn.Parameter(torch.zeros(1, 1, dim)),
        )
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 2, dim) * 0.02)
        self.blocks = nn.Sequential(Block(dim, fused=False), Block(dim, fused=True))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

    def features(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).expand(x.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([prefix, t], dim=1) + self.pos_embed))

    def forward(self, x):
        return self.head(self.features(x)[:, 0])


def hold_attention(model: nn.Module, hold: bool) -> nn.Module:
    for module in model.modules():
        if isinstance(module, Attention):
            module.hold = hold
    return model


def test_a_tiny_vit_has_global_context_at_its_first_attention_and_patch_fields():
    torch.manual_seed(0)
    model = TinyViT().eval()
    graph = rf_graph.analyse_module(model, "tiny vit", (16, 16), HALF, None)
    assert graph.global_context_module == "blocks.0.attn"
    assert graph.capture.node(graph.global_context).label == "matmul"  # q @ k^T, the first mixing
    end = graph.fields[-1]
    assert end.module == "norm" and (end.height.size, end.width.size) == (4, 4)
    assert end.global_context == graph.global_context
    twin = hold_attention(copy.deepcopy(model).double(), True)
    real = copy.deepcopy(model).double()
    for x, y in [(0, 0), (3, 1), (2, 3)]:
        token = 2 + 4 * y + x  # after the class and distillation tokens

        def pick(out, token=token):
            return out[0, token, 0]  # one feature: the features of a LayerNorm output sum to a constant

        local = gradient_box(twin.features, 16, 3, pick)
        assert analytic(graph, graph.end_point, x, y, 16) == local == (4 * y, 4 * y + 3, 4 * x, 4 * x + 3)
        assert gradient_box(real.features, 16, 3, pick) == (0, 15, 0, 15)  # the global context is real


def test_strict_refuses_attention_by_node():
    with pytest.raises(Unsupported, match=r"node 'matmul' .*mixes every position"):
        rf_graph.analyse_module(TinyViT().eval(), "tiny vit", (16, 16), HALF, None, strict=True)


# -- timm models by name: global context named, the local field against the real model held constant -----
def timm_model(name: str, positive: bool = False) -> nn.Module:
    """Random weights; ``positive``: their magnitudes, so that ReLUs pass every path (nothing cancels)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().double()
    if positive:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_().add_(0.01)
    return model


def detach_output(module, args, output):
    return output.detach()


def detach_input(module, args):
    return tuple(a.detach() for a in args)


def test_timm_vit_patch_tokens_have_their_patch_as_local_field():
    name, prefix = (
        "vit_tiny_patch16_224",
        1,
    )  # one class token (the tiny ViT above has a distillation token too)
    graph = rf_graph.analyse_model(name, (224, 224), HALF, None)
    assert graph.global_context_module == "blocks.0.attn"
    end = graph.fields[-1]
    assert end.module == "norm" and (end.height.jump, end.height.receptive, end.height.size) == (16, 16, 14)
    model = timm_model(name)
    for module in model.modules():  # the test's twin: every attention's result held constant
        if type(module).__name__ == "Attention":
            module.register_forward_hook(detach_output)
    for x, y in [(0, 0), (13, 5)]:
        local = gradient_box(
            model.forward_features, 224, 3, lambda out, x=x, y=y: out[0, prefix + 14 * y + x, 0]
        )
        assert analytic(graph, end.name, x, y, 224) == local == (16 * y, 16 * y + 15, 16 * x, 16 * x + 15)


def hold_gc_context(model: nn.Module) -> None:
    """gcresnet: the global-context vector that feeds the gate held constant."""
    for module in model.modules():
        if type(module).__name__ == "GlobalContext":
            for mlp in (module.mlp_scale, module.mlp_add):
                if mlp is not None:
                    mlp.register_forward_pre_hook(detach_input)


def held_grn(self, x):
    """timm's GlobalResponseNorm with its statistic over the image held constant."""
    x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
    x_n = (x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)).detach()
    return x + torch.addcmul(self.bias.view(self.wb_shape), self.weight.view(self.wb_shape), x * x_n)


def held_xca(self, x):
    """timm's CrossCovarianceAttn (EdgeNeXt) with its channel-attention map held constant."""
    n, t, c = x.shape
    q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1).unbind(0)
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
    x = attn.softmax(dim=-1).detach() @ v
    return self.proj(x.permute(0, 3, 1, 2).reshape(n, t, c))


@pytest.mark.parametrize(
    ("name", "module", "hold"),
    [
        ("gcresnet33ts", "stages.0.0.attn", "gc"),
        ("convnextv2_atto", "stages.0.blocks.0.mlp.grn", "grn"),
        ("edgenext_xx_small", "stages.1.blocks.1.xca", "xca"),
    ],
)
def test_channel_attention_is_named_global_context_and_the_local_field_is_proved(
    name, module, hold, monkeypatch
):
    from timm.layers.grn import GlobalResponseNorm
    from timm.models.edgenext import CrossCovarianceAttn

    size = 64
    graph = rf_graph.analyse_model(name, (size, size), HALF, None)
    assert graph.global_context_module == module
    end = graph.fields[-1]
    assert end.height.jump == 32 and end.height.size == 2
    if hold == "grn":
        monkeypatch.setattr(GlobalResponseNorm, "forward", held_grn)
    if hold == "xca":
        monkeypatch.setattr(CrossCovarianceAttn, "forward", held_xca)
    model = timm_model(name, positive=hold == "gc")
    if hold == "gc":
        hold_gc_context(model)
    for x, y in [(0, 0), (1, 0)]:
        local = gradient_box(model.forward_features, size, 3, lambda out, x=x, y=y: out[0, 0, y, x])
        assert analytic(graph, end.name, x, y, size) == local


def test_swin_is_refused_by_name_at_its_first_window_partition_and_earlier_end_points_answer():
    name = "swin_tiny_patch4_window7_224"
    with pytest.raises(Unsupported) as refused:
        rf_graph.analyse_model(name, (224, 224), HALF, None)
    message = refused.value.message
    assert message.startswith("windowed attention (Swin) at node 'view' in module 'layers.0.blocks.0'")
    assert "b'" not in message and "<" not in message
    last = message.split("the last end point that can be answered is '")[1].split("'")[0]
    answered = rf_graph.analyse_model(name, (224, 224), HALF, last)
    assert answered.fields[-1].height.jump == 4 and answered.global_context == ""
    patch = rf_graph.analyse_model(name, (224, 224), HALF, "patch_embed")
    assert (patch.fields[-1].height.receptive, patch.fields[-1].height.jump) == (4, 4)
    with pytest.raises(Unsupported, match="windowed attention"):
        rf_graph.analyse_model(name, (224, 224), HALF, "norm")


def test_the_onnx_export_of_a_tiny_vit_gives_the_pytorch_token_fields():
    torch.manual_seed(0)
    model = TinyViT().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), buffer, dynamo=False, opset_version=17)
    from_onnx = rf_graph.analyse_capture(rf_onnx.read(buffer.getvalue(), (16, 16), "tiny vit"), HALF, None)
    from_torch = rf_graph.analyse_module(model, "tiny vit", (16, 16), HALF, None)
    assert from_onnx.global_context_module == from_torch.global_context_module == "blocks.0.attn"
    ends = from_onnx.fields[-1], from_torch.fields[-1]
    assert ends[0].module == ends[1].module == "norm"
    assert ends[0].height == ends[1].height and ends[0].width == ends[1].width
    for x, y in [(0, 0), (3, 2)]:  # the class and distillation tokens come first in both
        assert analytic(from_onnx, ends[0].name, x, y, 16) == (4 * y, 4 * y + 3, 4 * x, 4 * x + 3)


# -- depth to space and space to depth: exact maps ---------------------------------------------------------
class Shuffled(nn.Module):
    """conv -> pixel_shuffle(r) or pixel_unshuffle(r) -> conv, positive weights."""

    def __init__(self, k1: int, s1: int, r: int, k2: int, unshuffle: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(1, r * r, k1, stride=s1, bias=False)
        self.shuffle = nn.PixelUnshuffle(r) if unshuffle else nn.PixelShuffle(r)
        self.conv2 = nn.Conv2d(r**4 if unshuffle else 1, 1, k2, padding=k2 // 2, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(0.5, 1.0)

    def forward(self, x):
        return self.conv2(self.shuffle(self.conv1(x)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k1=st.integers(1, 3),
    s1=st.integers(1, 2),
    r=st.integers(2, 3),
    k2=st.sampled_from([1, 3]),
    unshuffle=st.booleans(),
    data=st.data(),
)
def test_pixel_shuffle_and_unshuffle_map_exactly(k1, s1, r, k2, unshuffle, data):
    side = r * data.draw(st.integers(2, 4))  # the first convolution's output, a multiple of r
    size = (side - 1) * s1 + k1
    net = Shuffled(k1, s1, r, k2, unshuffle).double()
    graph = rf_graph.analyse_module(
        copy.deepcopy(net).float(), "shuffle", (size, size), HALF, None, channels=1
    )
    end = graph.fields[-1]
    x = data.draw(st.integers(0, end.width.size - 1))
    y = data.draw(st.integers(0, end.height.size - 1))
    real = gradient_box(net, size, 1, lambda out: out[0, :, y, x].sum())
    assert analytic(graph, end.name, x, y, size) == real


def test_onnx_depth_to_space_maps_exactly_and_a_space_to_depth_of_reshapes_is_named():
    net = Shuffled(3, 1, 2, 3, unshuffle=False)
    buffer = io.BytesIO()
    torch.onnx.export(net.float(), (torch.zeros(1, 1, 10, 10),), buffer, dynamo=False, opset_version=17)
    capture = rf_onnx.read(buffer.getvalue(), (10, 10), "shuffle")
    assert "DepthToSpace" in {n.label for n in capture.nodes}
    graph = rf_graph.analyse_capture(capture, HALF, None)
    end = graph.fields[-1]
    for x, y in [(0, 0), (end.width.size - 1, 1), (2, end.height.size - 1)]:
        real = gradient_box(net.double(), 10, 1, lambda out, x=x, y=y: out[0, :, y, x].sum())
        assert analytic(graph, end.name, x, y, 10) == real
    # PyTorch exports pixel_unshuffle as Reshape, Transpose, Reshape: named as such, not as attention
    buffer = io.BytesIO()
    unshuffle = Shuffled(2, 2, 2, 1, unshuffle=True).float()
    torch.onnx.export(unshuffle, (torch.zeros(1, 1, 8, 8),), buffer, dynamo=False, opset_version=17)
    with pytest.raises(Unsupported) as refused:
        rf_graph.analyse_capture(rf_onnx.read(buffer.getvalue(), (8, 8), "unshuffle"), HALF, None)
    message = refused.value.message
    assert "splits an image axis into blocks of 2 (a space-to-depth written as reshapes" in message
    assert "the last end point that can be answered is '/conv1/Conv'" in message


class MapProduct(nn.Module):
    """conv -> y @ y over the image axes (rows of one map with columns of the other)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y @ y.transpose(2, 3)


def test_a_product_of_image_maps_is_refused_by_node_with_the_last_end_point():
    with pytest.raises(Unsupported) as refused:
        rf_graph.analyse_module(MapProduct(), "product", (10, 10), HALF, None)
    message = refused.value.message
    assert "matmul (node 'matmul') cannot be mapped" in message
    assert "a product of computed maps over their image axes" in message
    assert "the last end point that can be answered is 'conv' (module 'conv')" in message


@pytest.mark.parametrize(("axis", "context"), [(1, ""), (3, "n"), (-1, "n")])
def test_onnx_lp_normalization_is_global_context_only_over_an_image_axis(axis, context):
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node("LpNormalization", ["x"], ["y"], name="n", axis=axis, p=2)
    graph = helper.make_graph([node], "g", [image], [out])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    analysed = rf_graph.analyse_capture(rf_onnx.read(data, (8, 8), "lp"), HALF, None)
    assert analysed.global_context == context and analysed.fields[-1].height.receptive == 1
