"""The contract every registered filter keeps (STYLE.md §12), on tiny random-weight models, offline, with the
inputs handed to it as the runner's filter stage hands them (``ScoringInputs``), never a run:

- scores: one finite-or-infinite value per image under each score name, the same on a second call
  (deterministic), and the same decision after a JSON round trip (what the ``filter-scores`` cache keeps);
- decision: keep and reject add up to the images, a reason for every rejected image and none for a kept one;
- thresholds re-decide only: a decision field is not in ``scoring_part`` (no rescoring);
- inputs: a filter asks only for inputs the stage can resolve, and a missing one is a clear error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_filters import tiny_clip

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import SettingError
from synthaug.filters.base import INPUTS, ScoringInputs, create_filter
from synthaug.filters.config import FILTERS
from synthaug.config import build_config

SCHEMA = LabelSchema.single(["0", "1"])


def images(n: int, seed: int, *, copies_of: LabeledImages | None = None) -> LabeledImages:
    """``n`` 16×16 RGB images, alternating classes; with ``copies_of``, every third one an exact copy of a real
    image of its class (so near-duplicate has something to reject)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n)[:, None] % 2
    if copies_of is not None:
        for i in range(0, n, 3):
            pixels[i] = copies_of.pixels[int(np.flatnonzero(copies_of.labels[:, 0] == labels[i, 0])[0])]
    return LabeledImages(SCHEMA, labels, [f"{labels[i, 0]}-{i:05d}" for i in range(n)], pixels=pixels, mode="RGB")


REAL = images(10, 1)
SYNTHETIC = images(12, 2, copies_of=REAL)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A random-weight small-cnn classifier saved as the train stage saves one."""
    from synthaug.train.config import ModelConfig
    from synthaug.train.models import create_classifier, save_classifier

    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = ModelConfig()
    save_classifier(create_classifier(config, SCHEMA, 3), config, SCHEMA, 3, 16, folder)
    return folder


def pixel_features(batch: LabeledImages) -> torch.Tensor:
    """A feature extractor: the flattened pixels in [0, 1]."""
    return torch.as_tensor(np.stack([batch.pixels[i] for i in range(len(batch))]), dtype=torch.float32).flatten(1) / 255


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """One config per registered filter, as the experiment config validates it, with thresholds that reject
    some images and keep others."""
    clip = tiny_clip(tmp_path_factory.mktemp("clip"))
    raw = {"confidence": {"keep_top_percent": 50}, "clip-score": {"model": str(clip), "reject_bottom_percent": 30},
           "near-duplicate": {"feature_ratio": 0.0}, "in-distribution": {"quantile": 0.5}}
    assert set(raw) == set(FILTERS.names()), "a new filter needs a config here to run the contract"
    arms = [{"name": "real-ce"}, {"name": "oversample", "train": {"mixing": "oversample"}},
            {"name": "synth", "synthetic": "generated"}]
    return {name: build_config({"arms": arms, "filters": [{"name": name, **params}]}).filters[0]
            for name, params in raw.items()}


@pytest.fixture
def inputs(classifier_dir):
    return ScoringInputs(device="cpu", classifier=classifier_dir, real=REAL, features=pixel_features)


@pytest.mark.parametrize("name", FILTERS.names())
def test_scores_are_per_image_and_deterministic_and_decisions_add_up(name, configs, inputs):
    flt = create_filter(configs[name])
    scores = flt.score(SYNTHETIC, inputs)
    assert scores and all(np.asarray(v).shape == (len(SYNTHETIC),) for v in scores.values())
    assert all(not np.isnan(np.asarray(v, dtype=np.float64)).any() for v in scores.values())
    again = flt.score(SYNTHETIC, inputs)
    assert {k: np.asarray(v).tolist() for k, v in again.items()} == {k: np.asarray(v).tolist() for k, v in scores.items()}

    classes, names = SYNTHETIC.labels[:, 0], SCHEMA.groups[0].classes
    decision = flt.decide(scores, classes, names)
    keep = np.asarray(decision.keep)
    assert keep.dtype == bool and keep.shape == (len(SYNTHETIC),) and len(decision.score) == len(SYNTHETIC)
    assert 0 < keep.sum() < len(SYNTHETIC), "the contract's thresholds keep some images and reject others"
    assert int(keep.sum()) + int((~keep).sum()) == len(SYNTHETIC) == len(decision.reasons)
    for kept, reason in zip(keep, decision.reasons):
        assert (reason is None) == bool(kept), "a reason for every rejected image, none for a kept one"
        assert reason is None or (isinstance(reason, str) and reason)

    # the stage caches scores as JSON (filter-scores/<name>/scores.json) and decides from the cache
    cached = {k: np.asarray(v, dtype=np.float64)
              for k, v in json.loads(json.dumps({k: np.asarray(v, dtype=np.float64).tolist()
                                                 for k, v in scores.items()})).items()}
    resumed = flt.decide(cached, classes, names)
    assert np.asarray(resumed.keep).tolist() == keep.tolist() and resumed.reasons == decision.reasons


@pytest.mark.parametrize("name", FILTERS.names())
def test_thresholds_only_redecide_and_inputs_are_declared(name, configs):
    config = configs[name]
    flt = create_filter(config)
    assert config.decision_fields and not config.decision_fields & set(config.scoring_part())
    assert flt.needs <= set(INPUTS)
    assert ("classifier" in flt.needs) == (flt.classifier_arm is not None)
    if flt.needs:  # a missing input is named, with how to give it
        with pytest.raises(SettingError, match="ScoringInputs"):
            flt.score(SYNTHETIC, ScoringInputs())
