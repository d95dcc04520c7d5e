"""Loading exported models back (``repository.loading``) in float64 and calling them flat
(``repository.calling``): each against the original PyTorch module evaluated in float64."""

from __future__ import annotations

import operator
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.calling import call_flat, input_count
from nnprobe_services.repository.loading import load_graph, load_module

from tests.support import sequence_models

TOLERANCE = 1e-12


def written(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_an_exported_lstm_cell_loads_back_equal_in_float64(tmp_path):
    cell = sequence_models.lstm_cell(3, 5, seed=1)
    path = written(tmp_path, "model.pt2", sequence_models.cell_pt2(cell, 3, 5, states=2))
    module = load_module(path, dtype=torch.float64)
    torch.manual_seed(2)
    x, h, c = (
        torch.randn(4, 3, dtype=torch.float64),
        torch.randn(4, 5, dtype=torch.float64),
        torch.randn(4, 5, dtype=torch.float64),
    )
    got = call_flat(module, [x, h, c])
    want = cell.double()(x, (h, c))
    assert [t.dtype for t in got] == [torch.float64, torch.float64]
    assert input_count(module) == 3
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=0, atol=TOLERANCE)
    assert all(p.dtype == torch.float64 for p in module.parameters())


def test_a_graph_that_names_float32_computes_in_float64(tmp_path):
    torch.manual_seed(3)
    cell = sequence_models.FixedPrecisionCell(3, 5)
    path = written(tmp_path, "model.pt2", sequence_models.cell_pt2(cell, 3, 5, states=1))
    module = load_graph(path, dtype=torch.float64)
    x = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    h = torch.full((2, 5), 1 / 7, dtype=torch.float64)
    (got,) = call_flat(module, [x, h])
    w_in, b_in = cell.input.weight.double(), cell.input.bias.double()
    want = torch.tanh(x @ w_in.T + b_in + h @ cell.recurrent.weight.double().T)  # written out in float64
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=TOLERANCE)
    # the same cell evaluated in float32 (as the graph's own .to(float32) would force) misses by far more
    assert (cell(x.float(), h.float()).double() - want).abs().max() > 1e-9


def test_an_onnx_gru_cell_converts_equal_in_float64(tmp_path):
    cell = sequence_models.gru_cell(3, 5, seed=4)
    data = sequence_models.onnx_bytes(cell, (torch.randn(2, 3), torch.randn(2, 5)), ["x", "h"])
    module = load_graph(written(tmp_path, "model.onnx", data), dtype=torch.float64)
    assert isinstance(module, torch.fx.GraphModule)
    torch.manual_seed(5)
    x, h = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    (got,) = call_flat(module, [x, h])
    assert got.dtype == torch.float64
    assert torch.allclose(got, cell.double()(x, h), rtol=0, atol=TOLERANCE)


def test_graph_nodes_come_in_execution_order(tmp_path):
    module = load_graph(
        written(tmp_path, "model.pt2", sequence_models.sequence_pt2(sequence_models.SequenceLSTM(3, 4), 3)),
        dtype=torch.float64,
    )
    seen: set[str] = set()
    for node in module.graph.nodes:
        assert all(arg.name in seen for arg in node.all_input_nodes), node
        seen.add(node.name)


def test_a_torch_save_pickle_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "model.pt2"
    torch.save(sequence_models.gru_cell(), path)
    with pytest.raises(InvalidArgument) as raised:
        load_module(path, dtype=torch.float64, field="model.file")
    assert raised.value.field == "model.file"
    assert "pickle" in raised.value.message


def test_a_non_floating_dtype_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        load_module(tmp_path / "model.pt2", dtype=torch.int64)


class Exploit:
    """Unpickling this would run ``print``: a loader that unpickles prints."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.recursive(
        st.integers() | st.text(max_size=8) | st.floats(allow_nan=False) | st.just(Exploit()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    ),
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
)
def test_every_pickle_is_refused_and_never_unpickled(tmp_path, capsys, payload, protocol):
    path = tmp_path / "model.pt2"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(InvalidArgument) as raised:
        load_module(path, dtype=torch.float64, field="metadata.format")
    assert raised.value.field == "metadata.format"
    assert "unpickled!" not in capsys.readouterr().out


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), hidden=st.integers(1, 6), batch=st.integers(1, 5))
def test_loaded_cells_match_the_original_for_any_weights(tmp_path, seed, hidden, batch):
    cell = sequence_models.gru_cell(2, hidden, seed=seed)
    path = written(tmp_path, f"m{seed}.pt2", sequence_models.cell_pt2(cell, 2, hidden, states=1))
    module = load_module(path, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, dtype=torch.float64, generator=generator)
    h = torch.randn(batch, hidden, dtype=torch.float64, generator=generator)
    (got,) = call_flat(module, [x, h])
    assert torch.allclose(got, cell.double()(x, h), rtol=0, atol=TOLERANCE)


def test_a_dynamic_batch_attention_block_with_size_arithmetic_loads(tmp_path):
    torch.manual_seed(8)
    block = sequence_models.TokenMixer(8, pooled=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    data = sequence_models.pt2_bytes(block, (torch.randn(2, 5, 8),), ({0: batch},))
    module = load_graph(written(tmp_path, "model.pt2", data), dtype=torch.float64)
    # the export records the batch size arithmetic as operator.mul on symbolic sizes
    assert any(node.target is operator.mul for node in module.graph.nodes)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    (got,) = call_flat(module, [x])
    assert torch.allclose(got, block.double()(x), rtol=0, atol=TOLERANCE)
