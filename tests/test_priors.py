"""The class prior of weighted-ce / balanced-softmax follows the label distribution of each batch composition's
batches (#12): every strategy's expected counts match the empirical label frequency of the batches it makes."""

import inspect

import numpy as np
import pytest
from pydantic import ValidationError

from synthaug.errors import SettingError
from synthaug.train.config import TrainConfig
from synthaug.train.batch_composition import BATCH_COMPOSITION, batch_prior, create_strategy, make_batches

GROUP_SIZES = [3, 2]


def _labels(n, p0, seed):
    """(n, 2) labels: group 0 drawn with probabilities p0, group 1 depends on group 0 (so groups correlate)."""
    rng = np.random.default_rng(seed)
    g0 = rng.choice(3, n, p=p0)
    g1 = (g0 == 2).astype(np.int64) | (rng.random(n) < 0.2)
    return np.stack([g0, g1], 1)


REAL = _labels(90, [0.75, 0.2, 0.05], 0)  # long-tailed
SYNTH = _labels(60, [0.05, 0.35, 0.6], 1)  # generated for the tail
OPTIONS = {"real-only": {}, "combined": {}, "oversample": {}, "oversample-synthetic": {"synthetic_share": 0.5},
           "oversample-synthetic/0.8": {"synthetic_share": 0.8}, "balanced-batch": {"synthetic_share": 0.25},
           "rsp": {"synthetic_share": 0.4}, "two-phase": {"phase": 1}, "two-phase/2": {"phase": 2}}


def _empirical(strategy, options, epochs):
    """Mean label counts per epoch over ``epochs`` epochs, per group."""
    pool = np.concatenate([REAL, SYNTH])
    totals = [np.zeros(k) for k in GROUP_SIZES]
    for e in range(epochs):
        idx = np.concatenate(make_batches(strategy, REAL, SYNTH, batch_size=8, rng=np.random.default_rng(e),
                                          **options))
        for g, k in enumerate(GROUP_SIZES):
            totals[g] += np.bincount(pool[idx, g], minlength=k)
    return [t / epochs for t in totals]


@pytest.mark.parametrize("key", list(OPTIONS))
def test_expected_counts_match_the_label_frequency_of_the_batches(key):
    strategy, options = key.split("/")[0], OPTIONS[key]
    expected, rule = batch_prior(strategy, REAL, SYNTH, GROUP_SIZES, batch_size=8, **options)
    assert rule
    empirical = _empirical(strategy, options, epochs=300)
    for e, m in zip(expected, empirical):
        assert e.sum() == pytest.approx(m.sum(), rel=0.01)  # images per epoch
        assert np.allclose(e / e.sum(), m / m.sum(), atol=0.01), (key, e / e.sum(), m / m.sum())


def test_every_strategy_has_a_prior_test_and_explicit_options():
    assert {k.split("/")[0] for k in OPTIONS} == set(BATCH_COMPOSITION.names())
    for name in BATCH_COMPOSITION.names():
        parameters = inspect.signature(BATCH_COMPOSITION.get(name)).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in parameters), name
    with pytest.raises(TypeError, match="takes no arguments"):
        BATCH_COMPOSITION.get("combined")(synthetic_share=0.5)  # a strategy rejects options it does not take
    assert create_strategy("combined", synthetic_share=0.9).batches  # ... and create_strategy passes only its own


def test_priors_per_strategy():
    real = np.array([[0]] * 8 + [[1]] * 2)
    synth = np.array([[1]] * 6 + [[2]] * 4)

    def probabilities(strategy, **options):
        counts, _ = batch_prior(strategy, real, synth, [3], batch_size=4, **options)
        return (counts[0] / counts[0].sum()).tolist()

    assert probabilities("real-only") == [0.8, 0.2, 0.0]
    assert probabilities("combined") == [0.4, 0.4, 0.2]  # real + synthetic counts
    assert probabilities("two-phase", phase=1) == [0.4, 0.4, 0.2]
    assert probabilities("two-phase", phase=2) == [0.8, 0.2, 0.0]
    assert probabilities("oversample") == pytest.approx([0.5, 0.5, 0.0])  # uniform over the real classes
    # share × synthetic + (1 − share) × real distribution
    assert probabilities("rsp", synthetic_share=0.5) == pytest.approx([0.4, 0.4, 0.2])
    assert probabilities("balanced-batch", synthetic_share=0.25) == pytest.approx([0.6, 0.3, 0.1])
    for strategy in OPTIONS:  # prior: real, whatever the strategy
        assert probabilities(strategy.split("/")[0], prior="real") == [0.8, 0.2, 0.0]


@pytest.mark.parametrize("batch_size, share", [(4, 0.9), (4, 0.1), (1, 0.5)])
def test_balanced_batch_needs_a_real_and_a_synthetic_image_per_batch(batch_size, share):
    message = r"batch_size=%d and synthetic_share=%s.*at least one of each.*batch_size >= \d" % (batch_size, share)
    with pytest.raises(ValidationError, match=message):
        TrainConfig(mixing="balanced-batch", batch_size=batch_size, synthetic_share=share)
    with pytest.raises(SettingError, match=message):
        make_batches("balanced-batch", REAL, SYNTH, batch_size=batch_size, rng=np.random.default_rng(0),
                     synthetic_share=share)
    TrainConfig(mixing="rsp", batch_size=batch_size, synthetic_share=share)  # rsp draws per slot: no split


def test_inapplicable_names_each_ignored_field_and_the_setting_it_needs():
    cfg = TrainConfig(mixing="combined", loss="ce", optimizer="adamw")
    fields = {"synthetic_share", "weight_k", "prior", "batch_mix_alpha", "momentum", "betas", "phase2_lr_scale",
              "lr", "label_smoothing", "model.trainable_stages", "model.drop_rate"}
    reasons = cfg.inapplicable(fields)
    assert set(reasons) == {"synthetic_share", "weight_k", "prior", "batch_mix_alpha", "momentum",
                            "phase2_lr_scale", "model.trainable_stages"}
    assert "train.synthetic_share is ignored" in reasons["synthetic_share"]
    assert "balanced-batch, rsp or oversample-synthetic" in reasons["synthetic_share"] and "'combined'" in reasons["synthetic_share"]
    assert "weighted-ce" in reasons["weight_k"] and "'ce'" in reasons["weight_k"]
    assert "sgd" in reasons["momentum"] and "freeze all-but-last" in reasons["model.trainable_stages"]
    used = TrainConfig(mixing="two-phase", phase2_epochs=1, loss="weighted-ce", optimizer="sgd", batch_mix="cutmix",
                       model={"freeze": "all-but-last"})
    assert set(used.inapplicable(fields)) == {"synthetic_share", "betas"} & fields
    assert set(TrainConfig(mixing="balanced-batch").inapplicable({"synthetic_share", "betas"})) == set()
    with pytest.raises(KeyError, match="weight_kk"):
        cfg.inapplicable({"weight_kk"})
