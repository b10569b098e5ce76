"""The synthetic loss weight ω (``train.synthetic_weight``, DiffuLT's ω): it multiplies the loss of synthetic
items in every loss, follows the label shares through CutMix/MixUp, drops synthetic gradients at 0, leaves the
Balanced Softmax prior alone, and leaves arm fingerprints unchanged at its default."""

import csv
import json

import numpy as np
import pytest
import torch

from synthaug.data import LabeledImages, LabelSchema
from synthaug.train.mixup import create_mixup_cutmix
from synthaug.train.config import PERFORMANCE, TrainConfig
from synthaug.train.loop import train_classifier
from synthaug.train.losses import LOSSES, create_loss

SIZES = [3, 2]  # two label groups
OPTIONS = {"ce": {"label_smoothing": 0.1}, "weighted-ce": {"weight_k": 2.0, "label_smoothing": 0.1},
           "balanced-softmax": {"label_smoothing": 0.05}}


def _batch(seed=0, b=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, sum(SIZES), generator=g)
    labels = torch.stack([torch.randint(0, k, (b,), generator=g) for k in SIZES], 1)
    synthetic = torch.tensor([False, True] * (b // 2))
    return logits, labels, synthetic


def _criterion(name):
    return create_loss(name, [np.array([40.0, 10.0, 2.0]), np.array([30.0, 5.0])], **OPTIONS[name])


def test_every_loss_is_listed_here():
    assert set(OPTIONS) == set(LOSSES.names())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_omega_scales_the_loss_of_the_synthetic_items(name):
    criterion = _criterion(name)
    logits, labels, synthetic = _batch()
    b = len(logits)
    # each part as a batch of its own (a mean over its items), rescaled to the sum over its items / B
    real_part = criterion(logits[~synthetic], labels[~synthetic]) * (~synthetic).sum() / b
    synthetic_part = criterion(logits[synthetic], labels[synthetic]) * synthetic.sum() / b
    for omega in (0.5, 0.0, 2.0):
        weights = torch.where(synthetic, omega, 1.0)
        assert torch.allclose(criterion(logits, labels, weights), real_part + omega * synthetic_part, atol=1e-6)
    assert torch.allclose(criterion(logits, labels, torch.ones(b)), criterion(logits, labels), atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_zero_weight_drops_the_synthetic_items_gradients(name):
    criterion = _criterion(name)
    logits, labels, synthetic = _batch(1)
    logits.requires_grad_(True)
    criterion(logits, labels, torch.where(synthetic, 0.0, 1.0)).backward()
    assert torch.count_nonzero(logits.grad[synthetic]) == 0
    real = logits.detach()[~synthetic].clone().requires_grad_(True)
    (criterion(real, labels[~synthetic]) * len(real) / len(logits)).backward()
    assert torch.allclose(logits.grad[~synthetic], real.grad, atol=1e-6)


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_a_mixed_item_weights_each_label_share_by_the_image_it_came_from(mix, name):
    """loss = Σ_i Σ_j W_ij v_j loss(logits_i, y_j) / B, with W the batch's mixing matrix and v_j = ω for a
    synthetic image j, 1 for a real one."""
    criterion = _criterion(name)
    logits, labels, synthetic = _batch(2)
    b, omega = len(logits), 0.3
    images = torch.rand(b, 3, 16, 16)
    torch.manual_seed(5)
    _, targets, weights = create_mixup_cutmix(mix, SIZES).mix(images, labels, torch.where(synthetic, omega, 1.0))
    torch.manual_seed(5)  # the same draw again, mixing the rows of the identity: W itself
    _, mixing, _ = create_mixup_cutmix(mix, [b]).mix(images, torch.eye(b), torch.ones(b))
    assert not torch.allclose(mixing, torch.eye(b))
    v = torch.where(synthetic, omega, 1.0)
    assert torch.allclose(weights, mixing @ v)
    expected = sum(mixing[i, j] * v[j] * criterion(logits[i : i + 1], labels[j : j + 1])
                   for i in range(b) for j in range(b)) / b
    assert torch.allclose(criterion(logits, targets, weights), expected, atol=1e-5)
    for t in torch.split(targets, SIZES, 1):
        assert torch.allclose(t.sum(1), torch.ones(b))


def test_without_weights_mixup_cutmix_is_unchanged():
    _, labels, _ = _batch(3)
    images = torch.rand(len(labels), 3, 8, 8)
    torch.manual_seed(0)
    mixed, targets = create_mixup_cutmix("cutmix", SIZES)(images, labels)
    torch.manual_seed(0)
    mixed_too, targets_too, weights = create_mixup_cutmix("cutmix", SIZES).mix(images, labels)
    assert weights is None and torch.equal(mixed, mixed_too) and torch.equal(targets, targets_too)


# ---------------------------------------------------------------------------------------------- training loop
def _images(counts, seed, prefix):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    pixels = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    return LabeledImages(LabelSchema.single(["a", "b", "c"]), labels, [f"{prefix}{i}" for i in range(len(labels))],
                         pixels=pixels)


def _first_epoch(tmp_path, omega, run):
    """One optimizer step at learning rate 0 (the warm-up's first): the loss of the initial model on one batch
    of every real and synthetic image, and the prior written for it."""
    real, synthetic = _images([8, 3, 1], 0, "r"), _images([0, 4, 6], 1, "s")
    cfg = TrainConfig(epochs=1, warmup_epochs=1, batch_size=32, loss="balanced-softmax", mixing="combined",
                      synthetic_weight=omega)
    train_classifier(real, synthetic, cfg, tmp_path / run, progress=False)
    rows = list(csv.DictReader((tmp_path / run / "curves.csv").read_text().splitlines()))
    return float(rows[0]["train_loss"]), json.loads((tmp_path / run / "prior.json").read_text())


def test_the_loop_weights_synthetic_images_and_keeps_the_prior_of_the_batches(tmp_path):
    (l0, p0), (l1, p1), (lh, ph) = (_first_epoch(tmp_path, w, f"w{w}") for w in (0.0, 1.0, 0.5))
    assert l0 < l1  # the synthetic images' loss is left out at ω = 0
    assert lh == pytest.approx((l0 + l1) / 2, rel=1e-5)  # the loss is linear in ω
    assert p0 == p1 == ph  # Balanced Softmax's prior: the batches' label distribution, whatever ω
    assert p1["phases"]["1"]["groups"]["label"] == pytest.approx({"a": 8 / 22, "b": 7 / 22, "c": 7 / 22})


# ---------------------------------------------------------------------------------------------- config
def test_omega_is_left_out_of_the_fingerprint_at_its_default_and_inapplicable_to_real_only_mixings():
    dump = TrainConfig().model_dump(mode="json", exclude=PERFORMANCE)  # what an arm's fingerprint hashes
    assert set(dump) == set(TrainConfig.model_fields) - PERFORMANCE - set(TrainConfig.added_fields)
    weighted = TrainConfig(mixing="combined", synthetic_weight=0.5)
    assert weighted.model_dump(mode="json", exclude=PERFORMANCE)["synthetic_weight"] == 0.5
    assert TrainConfig(**weighted.model_dump()) == weighted and TrainConfig(**TrainConfig().model_dump()) == TrainConfig()
    assert weighted.inapplicable({"synthetic_weight"}) == {}
    reason = TrainConfig(mixing="oversample", synthetic_weight=0.5).inapplicable({"synthetic_weight"})
    assert "train.synthetic_weight is ignored" in reason["synthetic_weight"] and "'oversample'" in reason["synthetic_weight"]
    with pytest.raises(ValueError, match="synthetic_weight"):
        TrainConfig(synthetic_weight=-0.1)
