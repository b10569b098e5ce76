"""Embedding splicing, Algorithm 1 of Mixing Visual Concepts (MVC): new text embeddings spliced together from the
caption embeddings of one class.

Al Rahat & Venkateswara, "Dataset Augmentation by Mixing Visual Concepts", 2024 (arXiv:2412.15358),
Algorithm 1. Each real image of a class has a caption; its CLIP text embedding is a matrix
e ∈ R^{m×d} (m tokens, d features). A new embedding starts as a copy of one of them and receives
blocks of rows (the paper's coarse mixing) and pieces of single rows (its fine mixing) from other embeddings of
the same class, so it never leaves the set of values that class's captions produce.

Everything random is drawn from the ``numpy.random.Generator`` passed in, so one item's seed fixes its
embedding whatever else is generated beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from synthaug.errors import SettingError


@dataclass(frozen=True)
class SplicedEmbedding:
    """A spliced embedding and where its values came from.

    Attributes:
        embedding: the new (m, d) embedding.
        sources: indices (into the class's embeddings) of the start embedding, then of each embedding
            rows or columns were copied from, without repeats, in order of first use.
    """

    embedding: torch.Tensor
    sources: tuple[int, ...]


def _span(length: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random non-empty slice ``lo:hi`` of ``range(length)`` (0 <= lo < hi <= length)."""
    lo, hi = sorted(rng.choice(length + 1, size=2, replace=False).tolist())
    return lo, hi


def _other(n: int, current: int, rng: np.random.Generator) -> int:
    """A random index in ``range(n)`` other than ``current`` (``current`` itself when n == 1)."""
    if n == 1:
        return current
    k = int(rng.integers(n - 1))
    return k + (k >= current)


def splice_embeddings(
    embeddings: torch.Tensor, *, coarse_steps: int, fine_steps: int, rng: np.random.Generator,
    start: int | None = None,
) -> SplicedEmbedding:
    """Algorithm 1 of MVC: a new embedding spliced from the caption embeddings of one class.

    Args:
        embeddings: (n, m, d) caption embeddings of one class, n >= 1.
        coarse_steps: P, how many times a block of whole rows is copied from another embedding.
        fine_steps: Q, how many times part of one row is copied from another embedding.
        rng: the source of every random choice.
        start: index of the start embedding; None picks one at random.

    Returns:
        The (m, d) spliced embedding (a new tensor) and the indices it was made from.

    Raises:
        ValueError: if the shapes or step counts are invalid.
    """
    if embeddings.ndim != 3 or embeddings.shape[0] == 0:
        raise SettingError(f"embeddings must be (n >= 1, m, d), but got shape {tuple(embeddings.shape)}.")
    if coarse_steps < 0 or fine_steps < 0:
        raise SettingError(f"coarse_steps and fine_steps must be >= 0, but got {coarse_steps=}, {fine_steps=}.")
    n, m, d = embeddings.shape
    if start is not None and not 0 <= start < n:
        raise SettingError(f"start must be in 0..{n - 1}, but got {start=}.")
    # 1. start from a (random) embedding of the class; drawn even when given, so the draws below do not
    #    depend on whether the start was planned
    drawn = int(rng.integers(n))
    base = drawn if start is None else start
    spliced = embeddings[base].clone()
    sources = [base]
    # 2. coarse mixing (the paper's term), P times: rows r:s from another embedding of the class
    for _ in range(coarse_steps):
        k = _other(n, base, rng)
        r, s = _span(m, rng)
        spliced[r:s] = embeddings[k, r:s]
        sources.append(k)
    # 3. fine mixing, Q times: row w, columns u:v from another embedding of the class
    for _ in range(fine_steps):
        k = _other(n, base, rng)
        w = int(rng.integers(m))
        u, v = _span(d, rng)
        spliced[w, u:v] = embeddings[k, w, u:v]
        sources.append(k)
    return SplicedEmbedding(spliced, tuple(dict.fromkeys(sources)))
