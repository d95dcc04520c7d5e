"""Truncated vs full BPTT: memory held for backward is flat in K when truncated, linear when not."""

import pytest
import torch
from nnprobe_services.errors import Cancelled
from nnprobe_services.sequence.recurrent import truncation

CPU = torch.device("cpu")


def test_truncated_is_flat_and_full_grows_linearly():
    events = list(truncation.compare(60, 8, 16, 4, 5, [1, 2, 3, 5], seed=0, device=CPU))
    assert [e.done for e in events[:-1]] == list(range(1, 2 * 11 + 1))
    result = events[-1]
    truncated = [p for p in result.points if p.mode == "truncated"]
    full = [p for p in result.points if p.mode == "full"]
    per_chunk = truncated[0].saved_bytes
    assert per_chunk > 0
    assert all(p.saved_bytes == per_chunk for p in truncated)
    assert full[0].saved_bytes == per_chunk
    assert result.truncated_slope_bytes == 0.0
    # Each extra chunk adds one chunk's saved tensors (within 5%; the first chunk's zero state differs).
    assert result.full_slope_bytes / per_chunk == pytest.approx(1.0, rel=0.05)
    for p in full:
        assert p.saved_bytes == pytest.approx(p.chunk_count * per_chunk, rel=0.05)
    assert [p.backward_passes for p in truncated] == [1, 2, 3, 5] and all(
        p.backward_passes == 1 for p in full
    )
    for a, b in zip(truncated, full, strict=True):  # detach() changes no forward value
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert result.parameters == 60 * 8 + 4 * 16 * (8 + 16 + 2) + 60 * 17


def test_model_and_tokens_are_deterministic():
    a = truncation.build_model(20, 4, 6, seed=3, device=CPU)
    b = truncation.build_model(20, 4, 6, seed=3, device=CPU)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(truncation.draw_tokens(20, 2, 9, 1, CPU), truncation.draw_tokens(20, 2, 9, 1, CPU))


def test_slope():
    assert truncation.slope([1, 2, 4], [10, 20, 40]) == pytest.approx(10.0)
    assert truncation.slope([3], [5]) == 0.0


def test_should_stop_raises():
    with pytest.raises(Cancelled):
        list(truncation.compare(10, 2, 2, 1, 2, [2], seed=0, device=CPU, should_stop=lambda: True))
