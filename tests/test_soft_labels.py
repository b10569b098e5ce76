"""Soft labels for inter-class translations (Diff-Mix, Wang et al., CVPR 2024): an image translated from class a
into class b at strength s trains on (1 − s^γ) · onehot(a) + s^γ · onehot(b), through the same losses."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthaug.data import LabeledImages, LabelSchema
from synthaug.errors import SettingError
from synthaug.train.config import PERFORMANCE, TrainConfig
from synthaug.train.data import ImageSet, attach_translation_targets, translation_targets
from synthaug.train.loop import train_classifier
from synthaug.train.losses import class_weights, create_loss

SCHEMA = LabelSchema.single(["a", "b", "c"])


def _images(labels, prefix, seed=0):
    labels = np.asarray(labels)
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    return LabeledImages(SCHEMA, labels, [f"{prefix}{i}" for i in range(len(labels))], pixels=pixels)


def _record(item_id, label, source=None, strength=0.8, translate_from="other-classes"):
    """A manifest line as the ddpm generator writes it (from noise: no translate_from and no strength)."""
    rec = {"item_id": item_id, "label_ids": [label], "seed": 1, "method": "ddpm",
           "source_ids": [] if source is None else [source]}
    if source is not None:
        rec.update(translate_from=translate_from, strength=strength)
    return rec


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_translation_targets_follow_the_diffmix_schedule(strength, gamma):
    real = {"r0": [0], "r1": [2]}
    records = [_record("t", 1, "r0", strength), _record("noise", 2), _record("own", 2, "r1", strength, "own-class"),
               {"item_id": "unlabelled", "label_ids": None, "source_ids": []}]
    targets = translation_targets(records, real, [3], gamma)
    lam = strength ** gamma
    assert np.allclose(targets["t"], [1 - lam, lam, 0.0]) and targets["t"].dtype == np.float32
    assert targets["noise"] is None and "unlabelled" not in targets
    assert np.allclose(targets["own"], [0, 0, 1])  # a translation within the class keeps its label


def test_translation_targets_mix_every_label_group():
    targets = translation_targets([_record("t", 1, "r", 0.25) | {"label_ids": [1, 0]}], {"r": [0, 1]}, [3, 2], 0.5)
    assert np.allclose(targets["t"], [0.5, 0.5, 0.0, 0.5, 0.5])


@pytest.mark.parametrize("record, message", [
    (_record("t", 1, "elsewhere"), r"'t'.*translated from real image 'elsewhere', which is not in the real"),
    (_record("t", 1, "r0") | {"strength": None}, r"'t'.*strength in \(0, 1\].*strength=None"),
    (_record("t", 1, "r0") | {"source_ids": ["r0", "r0"]}, r"one source id.*source_ids=\['r0', 'r0'\]"),
])
def test_bad_translation_lines_are_named(record, message):
    with pytest.raises(SettingError, match=message):
        translation_targets([record], {"r0": [0]}, [3], 0.5)


def test_attached_targets_ride_with_the_images():
    real, synthetic = _images([0, 0, 2], "r"), _images([1, 1, 2], "s", 1)
    records = [_record("s0", 1, "r0", 0.25), _record("s1", 1), _record("s2", 2, "r0", 1.0), _record("x", 0)]
    soft = attach_translation_targets(synthetic, records, real, gamma=0.5)
    assert synthetic.targets is None  # a copy
    assert np.allclose(soft.targets, [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]])
    assert np.allclose(soft.subset([2, 0]).targets, soft.targets[[2, 0]])
    data = ImageSet(real, soft, lambda x: x.float(), 8, soft_targets=True)
    assert torch.allclose(data[3][1], torch.tensor([0.5, 0.5, 0.0])) and data[3][2]
    assert torch.equal(data[2][1], torch.tensor([0.0, 0.0, 1.0])) and not data[2][2]  # real: one-hot
    assert data[3][1].dtype == torch.float32 and ImageSet(real, soft, lambda x: x, 8)[3][1].tolist() == [1]
    with pytest.raises(SettingError, match=r"no labelled manifest line.*\['s1'\]"):
        attach_translation_targets(synthetic, records[:1] + records[2:], real, gamma=0.5)
    with pytest.raises(SettingError, match=r"soft targets of shape \(3, 2\).*expected \(3, 3\)"):
        LabeledImages(SCHEMA, [0, 1, 2], ["a", "b", "c"], pixels=synthetic.pixels, targets=np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------- the loss
def _soft_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    targets = torch.softmax(torch.randn(6, 3, generator=g) * 2, 1)
    return logits, targets


def test_soft_targets_reach_cross_entropy_and_balanced_softmax():
    logits, targets = _soft_batch()
    counts = np.array([60.0, 12.0, 3.0])
    ce = -(targets * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(create_loss("ce", [counts])(logits, targets), ce)
    log_prior = torch.log(torch.tensor(counts / counts.sum())).float()
    bsm = -(targets * F.log_softmax(logits + log_prior, 1)).sum(1).mean()  # adjust the logits, then soft CE
    assert torch.allclose(create_loss("balanced-softmax", [counts])(logits, targets), bsm)
    weight = class_weights([counts], 2.0)[0]
    wce = -(weight * targets * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(create_loss("weighted-ce", [counts], weight_k=2.0)(logits, targets), wce)
    synthetic = torch.tensor([True, False] * 3)  # with ω: each item's soft loss times its weight
    per_item = -(targets * F.log_softmax(logits + log_prior, 1)).sum(1)
    expected = (per_item * torch.where(synthetic, 0.25, 1.0)).mean()
    assert torch.allclose(create_loss("balanced-softmax", [counts])(logits, targets, torch.where(synthetic, 0.25, 1.0)),
                          expected)


# ---------------------------------------------------------------------------------------------- training
def _first_loss(tmp_path, run, synthetic, mode):
    """The loss of the first optimizer step (learning rate 0, the warm-up's first), of the initial model on one
    batch of every image; a second epoch trains."""
    real = _images([0] * 8 + [1] * 3 + [2], "r")
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=32, loss="balanced-softmax", mixing="combined",
                      translation_labels={"mode": mode, "gamma": 0.5})
    train_classifier(real, synthetic, cfg, tmp_path / run, progress=False)
    rows = list(csv.DictReader((tmp_path / run / "curves.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    return float(rows[0]["train_loss"])


def test_train_classifier_trains_on_the_soft_targets(tmp_path):
    real = _images([0] * 8 + [1] * 3 + [2], "r")
    synthetic = _images([1, 1, 2, 2, 2], "s", 1)

    def translated(strength):
        records = [_record(f"s{i}", int(c), "r0", strength) for i, c in enumerate(synthetic.labels[:, 0])]
        return attach_translation_targets(synthetic, records, real, gamma=0.5)

    hard = _first_loss(tmp_path, "hard", synthetic, "hard")
    assert _first_loss(tmp_path, "soft-full", translated(1.0), "soft") == pytest.approx(hard, rel=1e-6)
    assert _first_loss(tmp_path, "hard-ignores", translated(0.25), "hard") == pytest.approx(hard, rel=1e-6)
    soft = _first_loss(tmp_path, "soft", translated(0.25), "soft")
    assert abs(soft - hard) > 1e-3  # half of each synthetic target is the source's class a
    with pytest.raises(SettingError, match="carry no soft targets.*attach_translation_targets"):
        _first_loss(tmp_path, "missing", synthetic, "soft")


def test_translation_labels_leave_the_fingerprint_alone_when_hard():
    hard = TrainConfig(mixing="combined", translation_labels={"mode": "hard"})
    assert "translation_labels" not in hard.model_dump(mode="json", exclude=PERFORMANCE)
    soft = TrainConfig(mixing="combined", translation_labels={"mode": "soft", "gamma": 1.0})
    assert soft.model_dump(mode="json", exclude=PERFORMANCE)["translation_labels"] == {"mode": "soft", "gamma": 1.0}
    assert TrainConfig(**soft.model_dump()) == soft
    assert "real images only" in TrainConfig(translation_labels={"mode": "soft"}).inapplicable(
        {"translation_labels"})["translation_labels"]
    with pytest.raises(ValueError, match="gamma"):
        TrainConfig(translation_labels={"mode": "soft", "gamma": 0})
