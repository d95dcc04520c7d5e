"""Distances between a model's input word embeddings, nearest neighbours, and spelling suggestions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from nnprobe_services.errors import NotFound


@dataclass
class Distance:
    euclidean: float
    cosine_similarity: float
    norm_a: float
    norm_b: float


def word_id(index: dict[str, int], word: str, field: str) -> int:
    """The id of ``word``; NotFound naming it and the closest vocabulary entries by spelling."""
    if word in index:
        return index[word]
    close = difflib.get_close_matches(word, list(index), n=5, cutoff=0.6)
    hint = f"; closest by spelling: {', '.join(close)}" if close else ""
    lower = f" (the vocabulary is lower-case: try {word.lower()!r})" if word.lower() in index else ""
    raise NotFound(f"word {word!r} is not in the vocabulary{lower}{hint}", field=field)


def distance(embeddings: torch.Tensor, a: int, b: int) -> Distance:
    """Euclidean distance and cosine similarity of rows ``a`` and ``b`` (in float64)."""
    ea, eb = embeddings[a].double(), embeddings[b].double()
    na, nb = float(ea.norm()), float(eb.norm())
    cosine = float(ea @ eb) / (na * nb) if na > 0 and nb > 0 else 0.0
    return Distance(float((ea - eb).norm()), cosine, na, nb)


def nearest(embeddings: torch.Tensor, query: int, k: int, metric: str) -> list[tuple[int, float]]:
    """The ``k`` rows nearest to row ``query`` (itself excluded), nearest first; ties by id."""
    table = embeddings.double()
    q = table[query]
    if metric == "cosine":
        norms = table.norm(dim=1) * q.norm()
        d = 1 - (table @ q) / norms.clamp_min(1e-300)
    else:
        d = (table - q).norm(dim=1)
    d[query] = float("inf")
    k = min(k, table.shape[0] - 1)
    order = sorted(range(table.shape[0]), key=lambda i: (float(d[i]), i))[:k]
    return [(i, float(d[i])) for i in order]
