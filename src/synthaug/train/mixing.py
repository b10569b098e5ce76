"""Real + synthetic mixing strategies, registered by name.

A strategy turns the label arrays of the real and synthetic sets into one epoch of batches. Indices below
``num_real`` are real images; ``num_real + j`` is synthetic image j. All randomness comes from the
``numpy.random.Generator`` passed in, so an epoch is reproducible from (seed, epoch).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from synthaug.train.config import MIXING, REAL_ONLY  # noqa: F401  (re-exported)
from synthaug.errors import SettingError

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
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    passes = [rng.permutation(n) for _ in range(math.ceil(total / n))]
    return np.concatenate(passes)[:total]


@MIXING.register("balanced-batch")
def balanced_batch(real_labels, synth_labels, *, batch_size, rng, synthetic_share: float = 0.5, **_) -> Batches:
    """Every batch holds a fixed real:synthetic share (default 50/50).

    An epoch is one pass over the real images; synthetic images are drawn in shuffled passes.
    """
    if not 0 <= synthetic_share < 1:
        raise SettingError(f"synthetic_share must be in [0, 1), but got {synthetic_share=}.")
    n_real, n_synth = len(real_labels), len(synth_labels)
    per_synth = round(batch_size * synthetic_share) if n_synth else 0
    per_real = batch_size - per_synth
    steps = math.ceil(n_real / per_real)
    real_idx = _cycle(n_real, steps * per_real, rng)
    synth_idx = _cycle(n_synth, steps * per_synth, rng) + n_real if per_synth else np.zeros(0, dtype=np.int64)
    return [rng.permutation(np.concatenate([real_idx[s * per_real:(s + 1) * per_real],
                                            synth_idx[s * per_synth:(s + 1) * per_synth]]))
            for s in range(steps)]


@MIXING.register("rsp")
def random_selection(real_labels, synth_labels, *, batch_size, rng, synthetic_share: float = 0.5, **_) -> Batches:
    """Random selection with probability: each batch slot is synthetic with probability p = synthetic_share.

    Real and synthetic images are drawn in shuffled passes (no repeat within a pass). An epoch has
    ceil(N_real / (1 − p)) slots, so it is one pass over the real images in expectation.

    Raises:
        ValueError: p outside [0, 1), or an empty synthetic set with p > 0.
    """
    if not 0 <= synthetic_share < 1:
        raise SettingError(f"synthetic_share (rsp probability) must be in [0, 1), but got {synthetic_share=}.")
    n_real, n_synth = len(real_labels), len(synth_labels)
    if n_synth == 0 and synthetic_share > 0:
        raise SettingError("mixing 'rsp' draws from the synthetic set, but it is empty; generate images first or "
                         "use mixing 'real-only'.")
    slots = math.ceil(n_real / (1 - synthetic_share))
    is_synth = rng.random(slots) < synthetic_share
    order = np.empty(slots, dtype=np.int64)
    order[~is_synth] = _cycle(n_real, int((~is_synth).sum()), rng)
    order[is_synth] = _cycle(n_synth, int(is_synth.sum()), rng) + n_real
    return _chunks(order, batch_size)


@MIXING.register("two-phase")
def two_phase(real_labels, synth_labels, *, batch_size, rng, phase: int = 1, **_) -> Batches:
    """Phase 1: real and synthetic images in one shuffled pool (as ``combined``); phase 2: real images only.

    The training loop runs ``epochs`` epochs of phase 1, then ``phase2_epochs`` epochs of phase 2 at a
    learning rate scaled by ``phase2_lr_scale``.
    """
    if phase not in (1, 2):
        raise SettingError(f"two-phase mixing has phases 1 and 2, but got {phase=}.")
    if phase == 1:
        return combined(real_labels, synth_labels, batch_size=batch_size, rng=rng)
    return real_only(real_labels, synth_labels, batch_size=batch_size, rng=rng)


def make_batches(strategy: str, real_labels: np.ndarray, synth_labels: np.ndarray, *, batch_size: int,
                 rng: np.random.Generator, **options) -> Batches:
    """One epoch of batches from the strategy registered as ``strategy``."""
    fn: Callable[..., Batches] = MIXING.get(strategy)
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, but got {batch_size=}.")
    return fn(np.asarray(real_labels), np.asarray(synth_labels), batch_size=batch_size, rng=rng, **options)
