"""Real + synthetic mixing strategies, registered by name.

A strategy turns the label arrays of the real and synthetic sets into one epoch of batches. Indices below
``num_real`` are real images; ``num_real + j`` is synthetic image j. All randomness comes from the
``numpy.random.Generator`` passed in, so an epoch is reproducible from (seed, epoch).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from synthaug.registry import Registry

MIXING: Registry = Registry("mixing strategy")
Batches = list[np.ndarray]


def _chunks(order: np.ndarray, batch_size: int) -> Batches:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@MIXING.register("real-only")
def real_only(real_labels: np.ndarray, synth_labels: np.ndarray, *, batch_size: int,
              rng: np.random.Generator, **_) -> Batches:
    """Real images only, shuffled (the synthetic set is ignored)."""
    return _chunks(rng.permutation(len(real_labels)), batch_size)


@MIXING.register("combined")
def combined(real_labels, synth_labels, *, batch_size, rng, **_) -> Batches:
    """Real and synthetic images concatenated into one shuffled pool."""
    return _chunks(rng.permutation(len(real_labels) + len(synth_labels)), batch_size)


@MIXING.register("oversample")
def oversample(real_labels, synth_labels, *, batch_size, rng, **_) -> Batches:
    """Random oversampling of real images: every class (first label group) is resampled with replacement up
    to the largest class's count; synthetic images are ignored. The baseline that synthetic data must beat."""
    labels = real_labels[:, 0] if real_labels.ndim == 2 else real_labels
    counts = np.bincount(labels)
    target = counts.max()
    idx = []
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(labels == c)
        idx.append(members)
        idx.append(rng.choice(members, target - len(members), replace=True))
    return _chunks(rng.permutation(np.concatenate(idx)), batch_size)


def _cycle(n: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` indices from 0..n-1: whole shuffled passes, then part of one more (each index at most once
    per pass)."""
    passes = [rng.permutation(n) for _ in range(math.ceil(total / n))]
    return np.concatenate(passes)[:total]


@MIXING.register("balanced-batch")
def balanced_batch(real_labels, synth_labels, *, batch_size, rng, synthetic_share: float = 0.5, **_) -> Batches:
    """Every batch holds a fixed real:synthetic share (default 50/50).

    An epoch is one pass over the real images; synthetic images are drawn in shuffled passes.
    """
    if not 0 <= synthetic_share < 1:
        raise ValueError(f"synthetic_share must be in [0, 1), but got {synthetic_share=}.")
    n_real, n_synth = len(real_labels), len(synth_labels)
    per_synth = round(batch_size * synthetic_share) if n_synth else 0
    per_real = batch_size - per_synth
    steps = math.ceil(n_real / per_real)
    real_idx = _cycle(n_real, steps * per_real, rng)
    synth_idx = _cycle(n_synth, steps * per_synth, rng) + n_real if per_synth else np.zeros(0, dtype=np.int64)
    return [rng.permutation(np.concatenate([real_idx[s * per_real:(s + 1) * per_real],
                                            synth_idx[s * per_synth:(s + 1) * per_synth]]))
            for s in range(steps)]


def make_batches(strategy: str, real_labels: np.ndarray, synth_labels: np.ndarray, *, batch_size: int,
                 rng: np.random.Generator, **options) -> Batches:
    """One epoch of batches from the strategy registered as ``strategy``."""
    fn: Callable[..., Batches] = MIXING.get(strategy)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size=}.")
    return fn(np.asarray(real_labels), np.asarray(synth_labels), batch_size=batch_size, rng=rng, **options)
