import numpy as np
import pytest

from synthaug.train.batch_composition import make_batches


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)[:, None]


def test_balanced_batch_holds_configured_share():
    real, synth = _labels([50, 10, 4]), _labels([0, 40, 46])
    batches = make_batches("balanced-batch", real, synth, batch_size=20, rng=np.random.default_rng(0),
                           synthetic_share=0.25)
    n_real = len(real)
    assert all((b >= n_real).sum() == 5 and len(b) == 20 for b in batches)
    real_seen = np.concatenate([b[b < n_real] for b in batches])
    assert set(real_seen) == set(range(n_real))  # one epoch = one pass over the real images


def test_combined_covers_everything_once_and_real_only_ignores_synthetic():
    real, synth = _labels([5, 3]), _labels([2, 4])
    rng = np.random.default_rng(0)
    combined = np.concatenate(make_batches("combined", real, synth, batch_size=4, rng=rng))
    assert sorted(combined) == list(range(14))
    real_only = np.concatenate(make_batches("real-only", real, synth, batch_size=4, rng=rng))
    assert sorted(real_only) == list(range(8))


def test_oversample_balances_classes_with_real_images_only():
    real = _labels([30, 6, 2])
    idx = np.concatenate(make_batches("oversample", real, _labels([1]), batch_size=16, rng=np.random.default_rng(0)))
    assert idx.max() < len(real)
    assert np.bincount(real[idx, 0]).tolist() == [30, 30, 30]


def test_epochs_are_reproducible_and_unknown_strategy_is_named():
    real = _labels([10, 10])
    a = make_batches("combined", real, real, batch_size=8, rng=np.random.default_rng(5))
    b = make_batches("combined", real, real, batch_size=8, rng=np.random.default_rng(5))
    assert all((x == y).all() for x, y in zip(a, b))
    with pytest.raises(KeyError, match="balanced-batch"):
        make_batches("nope", real, real, batch_size=8, rng=np.random.default_rng(0))


def test_oversample_synthetic_keeps_a_rare_class_half_real():
    """Every class gets T = 60 draws an epoch; a class's real images at least half of them (resampled when
    few), distinct synthetic images for the rest, and real images again where synthetic ones run short."""
    real, synth = _labels([60, 12, 4, 30]), _labels([0, 48, 56, 10])
    n_real = len(real)
    for epoch in range(3):
        idx = np.concatenate(make_batches("oversample-synthetic", real, synth, batch_size=16,
                                          rng=np.random.default_rng(epoch), synthetic_share=0.5))
        is_synth = idx >= n_real
        labels = np.concatenate([real, synth])[idx, 0]
        assert np.bincount(labels).tolist() == [60, 60, 60, 60]
        assert np.bincount(labels[~is_synth]).tolist() == [60, 30, 30, 50]  # class 3: only 10 synthetic images
        assert len(set(idx[is_synth])) == is_synth.sum()  # synthetic images drawn without replacement
        assert set(range(n_real)) <= set(idx[~is_synth])  # every real image at least once
