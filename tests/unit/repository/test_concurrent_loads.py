"""``torch.export.load`` keeps its deserializer in a process-wide global, so two threads loading archives at
once used to fail ("_CURRENT_DESERIALIZER is already set"). Every service loads ``.pt2`` files through
``artifacts.load_pt2`` from its compute threads (uploads, analyses, classifiers): many threads loading
at once must all get their programs, each equal to its own module."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from nnprobe_services.repository import artifacts
from torch import nn


def _archive(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 4),)), buffer)
    path = folder / f"net-{seed}.pt2"
    path.write_bytes(buffer.getvalue())
    return path


def test_many_threads_load_archives_at_once(tmp_path):
    paths = [_archive(tmp_path, seed) for seed in range(4)]
    x = torch.randn(2, 4)
    expected = [torch.export.load(str(p)).module()(x) for p in paths]

    def load(i: int) -> torch.Tensor:
        program = artifacts.load_pt2(paths[i % 4], max_nodes=1000, max_bytes=1 << 24)
        return program.module()(x)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(load, range(48)))
    for i, result in enumerate(results):
        torch.testing.assert_close(result, expected[i % 4], rtol=0, atol=0)
