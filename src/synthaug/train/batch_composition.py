"""Batch composition (config key ``train.mixing``): how each epoch's batches are drawn from the real and synthetic
sets. The strategies (real-only, combined, oversample, oversample-synthetic, balanced-batch, rsp, two-phase) are
registered by name in :data:`BATCH_COMPOSITION`.

A strategy turns the label arrays of the real and synthetic sets into one epoch of batches. Indices below
``num_real`` are real images; ``num_real + j`` is synthetic image j. All randomness comes from the
``numpy.random.Generator`` passed in, so an epoch is reproducible from (seed, epoch).

Each strategy also knows the label distribution its batches follow (:meth:`CompositionStrategy.expected_counts`):
the class prior of Balanced Softmax and the N_i of weighted cross-entropy (see :func:`batch_prior`).

Before any strategy runs, ``train.synthetic_ratio`` picks the synthetic images an arm uses at all
(:func:`class_shares`, :func:`keep_by_share`); every strategy then composes batches from that subset as it would
from a whole set.

Not to be confused with MixUp / CutMix of the images within a batch (:mod:`synthaug.train.mixup`).
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from synthaug.train.config import BATCH_COMPOSITION, REAL_ONLY, balanced_batch_split  # noqa: F401  (re-exported)
from synthaug.errors import SettingError

if TYPE_CHECKING:
    from synthaug.data.stats import ShotThresholds

Batches = list[np.ndarray]


def _chunks(order: np.ndarray, batch_size: int) -> Batches:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _cycle(n: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` indices from 0..n-1: whole shuffled passes, then part of one more (each index at most once
    per pass)."""
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    passes = [rng.permutation(n) for _ in range(math.ceil(total / n))]
    return np.concatenate(passes)[:total]


def _as_2d(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def _groups_of(labels: np.ndarray, groups: int) -> np.ndarray:
    """``labels`` as an (N, groups) integer array, also when N = 0 (an empty synthetic set)."""
    return np.asarray(labels, dtype=np.int64).reshape(len(labels), groups)


def class_counts(labels: np.ndarray, group_sizes: Sequence[int]) -> list[np.ndarray]:
    """Images per class of every label group, as floats (``labels``: (N, G) class indices)."""
    if len(labels) == 0:
        return [np.zeros(k) for k in group_sizes]
    labels = _as_2d(labels)
    return [np.bincount(labels[:, g], minlength=k).astype(np.float64) for g, k in enumerate(group_sizes)]


SHOT_GROUPS = ("many", "medium", "few")  # the keys of train.synthetic_ratio that name a shot group


def class_shares(ratio: Mapping[str, float] | None, classes: Sequence[str], real_counts: Sequence[int],
                 thresholds: ShotThresholds, *, where: str = "train.synthetic_ratio") -> np.ndarray:
    """Per class of the first label group, the share of its synthetic images an arm uses (``train.synthetic_ratio``):
    the class's own entry, else the entry of its shot group (by its real training count and ``thresholds``), else 1.

    Args:
        ratio: ``{class name or "many" / "medium" / "few": share in [0, 1]}``; None: 1 for every class.
        classes: the first label group's class names, in index order.
        real_counts: each class's real training images (decides its shot group).
        where: the setting named in errors.

    Returns:
        float array (C,) of shares in [0, 1].

    Raises:
        SettingError: a key that is neither a class nor a shot group (the message lists the valid ones), or a
            key that is both (a class named "few").
    """
    shares = np.ones(len(classes))
    if not ratio:
        return shares
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = [k for k in ratio if k not in index and k not in SHOT_GROUPS]
    if unknown:
        listed = ", ".join(list(index)[:20]) + (f", ... ({len(index)} classes)" if len(index) > 20 else "")
        raise SettingError(f"{where}: {unknown} name(s) neither a class of this data nor a shot group; use a shot "
                           f"group ({', '.join(SHOT_GROUPS)}) or a class name ({listed}).")
    both = [k for k in ratio if k in index and k in SHOT_GROUPS]
    if both:
        raise SettingError(f"{where}: {both} name(s) both a class and a shot group; give the share of each of those "
                           "classes' shot groups by its classes' names instead.")
    for i, (name, count) in enumerate(zip(classes, real_counts)):
        group = thresholds.group(int(count))
        if str(name) in ratio:
            shares[i] = ratio[str(name)]
        elif group in ratio:
            shares[i] = ratio[group]
    return shares


def keep_by_share(labels: np.ndarray, shares: Sequence[float]) -> np.ndarray:
    """The synthetic images kept at per-class ``shares``: of the n_c images of class c (first label group) the
    first round(share_c × n_c) (rounded half up) in the given order, the plan's; so a smaller share keeps a subset
    of a larger one's images, and changing a share never needs an image that was not made.

    Returns:
        The kept indices, ascending (the images keep their order).
    """
    labels = np.asarray(labels, dtype=np.int64)
    first = labels if labels.ndim == 1 else labels[:, 0]
    keep = np.zeros(len(first), dtype=bool)
    for c in np.unique(first):
        members = np.flatnonzero(first == c)
        keep[members[: math.floor(float(shares[c]) * len(members) + 0.5)]] = True
    return np.flatnonzero(keep)


class CompositionStrategy:
    """Base of a batch composition strategy: one epoch of batches, and the label distribution those batches follow."""

    prior_rule = ""  # how :meth:`expected_counts` is made, in words (recorded in prior.json)

    def batches(self, real_labels: np.ndarray, synth_labels: np.ndarray, *, batch_size: int,
                rng: np.random.Generator) -> Batches:
        raise NotImplementedError

    def expected_counts(self, real_labels: np.ndarray, synth_labels: np.ndarray, group_sizes: Sequence[int], *,
                        batch_size: int) -> list[np.ndarray]:
        """Per label group, the expected number of images of each class in one epoch of :meth:`batches`
        (expectation over the random draws)."""
        raise NotImplementedError


@BATCH_COMPOSITION.register("real-only")
class RealOnly(CompositionStrategy):
    """Real images only, shuffled (the synthetic set is ignored)."""

    prior_rule = "real class counts"

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        return _chunks(rng.permutation(len(real_labels)), batch_size)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        return class_counts(real_labels, group_sizes)


@BATCH_COMPOSITION.register("combined")
class Combined(CompositionStrategy):
    """Real and synthetic images concatenated into one shuffled pool."""

    prior_rule = "real + synthetic class counts"

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        return _chunks(rng.permutation(len(real_labels) + len(synth_labels)), batch_size)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        real, synth = class_counts(real_labels, group_sizes), class_counts(synth_labels, group_sizes)
        return [r + s for r, s in zip(real, synth)]


@BATCH_COMPOSITION.register("oversample")
class Oversample(CompositionStrategy):
    """Random oversampling of real images: every class (first label group) is resampled with replacement up
    to the largest class's count; synthetic images are ignored. The baseline that synthetic data must beat."""

    prior_rule = ("uniform over the first group's classes (oversampled real images); other groups: their "
                  "distribution within each first-group class, averaged over those classes")

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        labels = real_labels[:, 0] if real_labels.ndim == 2 else real_labels
        counts = np.bincount(labels)
        target = counts.max()
        idx = []
        for c in np.flatnonzero(counts):
            members = np.flatnonzero(labels == c)
            idx.append(members)
            idx.append(rng.choice(members, target - len(members), replace=True))
        return _chunks(rng.permutation(np.concatenate(idx)), batch_size)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        # Every real image of first-group class c is drawn target / N_c times in expectation (once, plus
        # target − N_c draws with replacement among the N_c members).
        labels = _as_2d(real_labels)
        counts = np.bincount(labels[:, 0], minlength=group_sizes[0])
        draws_per_image = counts.max() / counts[labels[:, 0]]
        return [np.bincount(labels[:, g], weights=draws_per_image, minlength=k) for g, k in enumerate(group_sizes)]


@BATCH_COMPOSITION.register("oversample-synthetic")
class OversampleSynthetic(CompositionStrategy):
    """Oversampling with synthetic images: every class (first label group) gets T draws an epoch, T = the
    largest class's real + synthetic count; at least ``1 − synthetic_share`` of them are its real images
    (each once, then resampled with replacement, as ``oversample``), the rest distinct synthetic images (a
    new random subset each epoch), and real images again where a class has too few synthetic ones.

    Where ``combined`` shows a 4-image class's real images once among hundreds of synthetic ones, this keeps
    them half of the class's draws: the strongest non-generative baseline plus the synthetic images.
    """

    def __init__(self, *, synthetic_share: float = 0.5):
        if not 0 <= synthetic_share < 1:
            raise SettingError(f"synthetic_share must be in [0, 1), but got {synthetic_share=}.")
        self.synthetic_share = synthetic_share
        self.prior_rule = ("uniform over the first group's classes (T draws each: oversampled real and synthetic "
                           "images); other groups: their distribution within those draws")

    def _draws(self, real: np.ndarray, synth: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(real draws, synthetic draws) per first-group class."""
        n_real, n_synth = np.bincount(real, minlength=classes), np.bincount(synth, minlength=classes)
        target = int((n_real + n_synth).max(initial=0))
        wanted_real = np.where(n_real > 0, np.maximum(n_real, math.ceil((1 - self.synthetic_share) * target)), 0)
        synth_draws = np.minimum(n_synth, target - np.minimum(wanted_real, target))
        real_draws = np.where(n_real > 0, target - synth_draws, 0)
        return real_draws, synth_draws

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        real = _as_2d(real_labels)
        real, synth = real[:, 0], _groups_of(synth_labels, real.shape[1])[:, 0]
        classes = int(max(real.max(initial=-1), synth.max(initial=-1))) + 1
        real_draws, synth_draws = self._draws(real, synth, classes)
        idx = []
        for c in range(classes):
            members = np.flatnonzero(real == c)
            if real_draws[c]:
                idx += [members, rng.choice(members, real_draws[c] - len(members), replace=True)]
            if synth_draws[c]:
                idx.append(rng.permutation(np.flatnonzero(synth == c))[:synth_draws[c]] + len(real))
        return _chunks(rng.permutation(np.concatenate(idx)), batch_size)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        real, synth = _groups_of(real_labels, len(group_sizes)), _groups_of(synth_labels, len(group_sizes))
        real_draws, synth_draws = self._draws(real[:, 0], synth[:, 0], group_sizes[0])
        n_real = np.maximum(np.bincount(real[:, 0], minlength=group_sizes[0]), 1)
        n_synth = np.maximum(np.bincount(synth[:, 0], minlength=group_sizes[0]), 1)
        w_real = (real_draws / n_real)[real[:, 0]]  # expected draws of each real / synthetic image
        w_synth = (synth_draws / n_synth)[synth[:, 0]]
        return [np.bincount(real[:, g], weights=w_real, minlength=k)
                + np.bincount(synth[:, g], weights=w_synth, minlength=k) for g, k in enumerate(group_sizes)]


def _expected_from_draws(real_labels, synth_labels, group_sizes, real_draws: float,
                          synth_draws: float) -> list[np.ndarray]:
    """Expected counts when ``real_draws`` real and ``synth_draws`` synthetic images are drawn in shuffled
    passes (every image of a set equally often)."""
    real, synth = class_counts(real_labels, group_sizes), class_counts(synth_labels, group_sizes)
    n_real, n_synth = max(len(real_labels), 1), max(len(synth_labels), 1)
    return [r * real_draws / n_real + s * synth_draws / n_synth for r, s in zip(real, synth)]


@BATCH_COMPOSITION.register("balanced-batch")
class BalancedBatch(CompositionStrategy):
    """Every batch holds a fixed real:synthetic share (default 50/50): round(batch_size × share) synthetic.

    An epoch is one pass over the real images; synthetic images are drawn in shuffled passes.
    """

    def __init__(self, *, synthetic_share: float = 0.5):
        if not 0 <= synthetic_share < 1:
            raise SettingError(f"synthetic_share must be in [0, 1), but got {synthetic_share=}.")
        self.synthetic_share = synthetic_share
        self.prior_rule = (f"expected batch composition: {synthetic_share} × synthetic + {1 - synthetic_share:g} "
                           "× real class distribution (share rounded per batch)")

    def _split(self, n_real: int, n_synth: int, batch_size: int) -> tuple[int, int, int]:
        """(steps, real per batch, synthetic per batch)."""
        per_real, per_synth = balanced_batch_split(batch_size, self.synthetic_share) if n_synth else (batch_size, 0)
        return math.ceil(n_real / per_real), per_real, per_synth

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        n_real, n_synth = len(real_labels), len(synth_labels)
        steps, per_real, per_synth = self._split(n_real, n_synth, batch_size)
        real_idx = _cycle(n_real, steps * per_real, rng)
        synth_idx = _cycle(n_synth, steps * per_synth, rng) + n_real
        return [rng.permutation(np.concatenate([real_idx[s * per_real:(s + 1) * per_real],
                                                synth_idx[s * per_synth:(s + 1) * per_synth]]))
                for s in range(steps)]

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        steps, per_real, per_synth = self._split(len(real_labels), len(synth_labels), batch_size)
        return _expected_from_draws(real_labels, synth_labels, group_sizes, steps * per_real, steps * per_synth)


@BATCH_COMPOSITION.register("rsp")
class RandomSelection(CompositionStrategy):
    """Random selection with probability: each batch slot is synthetic with probability p = synthetic_share.

    Real and synthetic images are drawn in shuffled passes (no repeat within a pass). An epoch has
    ceil(N_real / (1 − p)) slots, so it is one pass over the real images in expectation.

    Raises:
        SettingError: p outside [0, 1), or an empty synthetic set with p > 0.
    """

    def __init__(self, *, synthetic_share: float = 0.5):
        if not 0 <= synthetic_share < 1:
            raise SettingError(f"synthetic_share (rsp probability) must be in [0, 1), but got {synthetic_share=}.")
        self.synthetic_share = synthetic_share
        self.prior_rule = (f"expected batch composition: {synthetic_share} × synthetic + {1 - synthetic_share:g} "
                           "× real class distribution")

    def _slots(self, n_real: int, n_synth: int) -> int:
        if n_synth == 0 and self.synthetic_share > 0:
            raise SettingError("mixing 'rsp' draws from the synthetic set, but it is empty; generate images first "
                               "or use mixing 'real-only'.")
        return math.ceil(n_real / (1 - self.synthetic_share))

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        n_real, n_synth = len(real_labels), len(synth_labels)
        slots = self._slots(n_real, n_synth)
        is_synth = rng.random(slots) < self.synthetic_share
        order = np.empty(slots, dtype=np.int64)
        order[~is_synth] = _cycle(n_real, int((~is_synth).sum()), rng)
        order[is_synth] = _cycle(n_synth, int(is_synth.sum()), rng) + n_real
        return _chunks(order, batch_size)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        slots = self._slots(len(real_labels), len(synth_labels))
        p = self.synthetic_share
        return _expected_from_draws(real_labels, synth_labels, group_sizes, slots * (1 - p), slots * p)


@BATCH_COMPOSITION.register("two-phase")
class TwoPhase(CompositionStrategy):
    """Phase 1: real and synthetic images in one shuffled pool (as ``combined``); phase 2: real images only.

    The training loop runs ``epochs`` epochs of phase 1, then ``phase2_epochs`` epochs of phase 2 at a
    learning rate scaled by ``phase2_lr_scale``.
    """

    def __init__(self, *, phase: int = 1):
        if phase not in (1, 2):
            raise SettingError(f"two-phase mixing has phases 1 and 2, but got {phase=}.")
        self.phase = phase
        self._strategy = Combined() if phase == 1 else RealOnly()
        self.prior_rule = f"phase {phase}: {self._strategy.prior_rule}"

    def batches(self, real_labels, synth_labels, *, batch_size, rng):
        return self._strategy.batches(real_labels, synth_labels, batch_size=batch_size, rng=rng)

    def expected_counts(self, real_labels, synth_labels, group_sizes, *, batch_size):
        return self._strategy.expected_counts(real_labels, synth_labels, group_sizes, batch_size=batch_size)


def create_strategy(name: str, *, synthetic_share: float = 0.5, phase: int = 1) -> CompositionStrategy:
    """The strategy registered as ``name``, given only the options it takes (``synthetic_share`` for
    balanced-batch / rsp, ``phase`` for two-phase).

    Raises:
        UnknownNameError: an unknown name; the message lists the valid names.
    """
    cls = BATCH_COMPOSITION.get(name)
    options = {"synthetic_share": synthetic_share, "phase": phase}
    return cls(**{k: v for k, v in options.items() if k in inspect.signature(cls).parameters})


def make_batches(strategy: str, real_labels: np.ndarray, synth_labels: np.ndarray, *, batch_size: int,
                 rng: np.random.Generator, synthetic_share: float = 0.5, phase: int = 1) -> Batches:
    """One epoch of batches from the strategy registered as ``strategy`` (options it does not take are not
    passed to it; :meth:`synthaug.train.config.TrainConfig.inapplicable` reports them)."""
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, but got {batch_size=}.")
    composition = create_strategy(strategy, synthetic_share=synthetic_share, phase=phase)
    return composition.batches(np.asarray(real_labels), np.asarray(synth_labels), batch_size=batch_size, rng=rng)


def batch_prior(strategy: str, real_labels: np.ndarray, synth_labels: np.ndarray, group_sizes: Sequence[int], *,
                batch_size: int, synthetic_share: float = 0.5, phase: int = 1,
                prior: str = "auto") -> tuple[list[np.ndarray], str]:
    """The class distribution a loss corrects for, as expected images per class and epoch.

    It counts the images the batches hold, however their losses are weighted: the synthetic loss weight
    (``train.synthetic_weight``) leaves it unchanged.

    Args:
        prior: "auto": the distribution the strategy's batches follow; "real": the real images' counts.

    Returns:
        (per label group: expected images of each class in one epoch, the rule that made them in words).
    """
    real_labels, synth_labels = np.asarray(real_labels), np.asarray(synth_labels)
    if prior == "real":
        return class_counts(real_labels, group_sizes), "real class counts (prior: real)"
    if prior != "auto":
        raise SettingError(f"train.prior must be 'auto' or 'real', but got {prior!r}.")
    composition = create_strategy(strategy, synthetic_share=synthetic_share, phase=phase)
    counts = composition.expected_counts(real_labels, synth_labels, group_sizes, batch_size=batch_size)
    return counts, composition.prior_rule
