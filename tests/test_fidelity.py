"""Fidelity metrics that can fail: FID/KID of a set against itself ≈ 0 and growing as a copy is blurred or
noised more; improved precision/recall of identical sets ≈ 1 and of disjoint clusters ≈ 0; per-class results
name their extractor; the extractors load from local files or say which file is missing."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from synthaug.data import load_source
from synthaug.errors import MissingFileError
from synthaug.evaluate.features import FEATURES, create_extractor
from synthaug.evaluate.fidelity import fid_kid, fidelity, write_fidelity_csv
from synthaug.evaluate.precision_recall import precision_recall
from synthaug.registry import UnknownNameError


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target  # (1797, 8, 8) in [0, 1]


def flat(images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images).reshape(len(images), -1))


def test_fid_kid_zero_for_identical_and_growing_with_blur_and_noise(digits):
    images = digits[0][:800]
    real = flat(images)
    options = {"kid_subset_size": 400, "kid_subsets": 10}
    same = fid_kid(real, real, **options)
    assert same["fid"] < 1e-6
    blurred = [fid_kid(real, flat(gaussian_filter(images, sigma=(0, s, s))), **options) for s in (0.5, 1.0, 2.0)]
    rng = np.random.default_rng(0)
    noised = [fid_kid(real, flat(images + s * rng.standard_normal(images.shape)), **options) for s in (0.5, 1.0, 1.5)]
    for series in (blurred, noised):
        fids = [same["fid"]] + [r["fid"] for r in series]
        kids = [same["kid_mean"]] + [r["kid_mean"] for r in series]
        assert all(a < b for a, b in zip(fids, fids[1:])), fids
        assert all(a < b for a, b in zip(kids, kids[1:])), kids
        # "≈ 0": the set against itself is far below the mildest perturbation
        assert abs(same["kid_mean"]) < 0.5 * series[0]["kid_mean"] and same["fid"] < 1e-3 * series[0]["fid"]


def test_kid_of_two_halves_of_one_set_is_near_zero(digits):
    images, _ = digits
    x = flat(images)[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    halves = fid_kid(x[:800], x[800:1600], kid_subsets=10)
    far = fid_kid(x[:800], flat(gaussian_filter(images[800:1600], sigma=(0, 1, 1))), kid_subsets=10)
    assert abs(halves["kid_mean"]) < 0.05 * far["kid_mean"]


def test_precision_recall_identical_disjoint_and_half_covered():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=g)
    same = precision_recall(a, a)
    assert (same["precision"], same["recall"], same["coverage"], same["k"]) == (1.0, 1.0, 1.0, 3)
    far = precision_recall(a, a + 50.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # half the fakes on the real manifold, half far away: precision ≈ 0.5, recall stays high
    fake = torch.cat([torch.randn(150, 8, generator=g), torch.randn(150, 8, generator=g) + 50.0])
    mixed = precision_recall(a, fake)
    assert 0.4 < mixed["precision"] <= 0.5 and mixed["recall"] > 0.6
    # a fake set collapsed onto a few modes has high precision but low recall
    collapsed = precision_recall(a, a[:5].repeat(60, 1) + 1e-3 * torch.randn(300, 8, generator=g))
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2
    assert precision_recall(a[:1], a)["precision"] is None


def test_per_class_fidelity_names_its_extractor(digits, tmp_path):
    images, labels = digits
    x = flat(images)
    fake_labels = labels[:600]
    fake = flat(gaussian_filter(images[:600], sigma=(0, 1, 1)))
    fake[fake_labels == 3] = x[:600][fake_labels == 3]  # class 3: exact copies of real images
    result = fidelity(x[600:], labels[600:], fake, fake_labels, [str(c) for c in range(10)], extractor="pixels:test",
                      kid_subsets=5, n_boot=50)
    assert result["extractor"] == "pixels:test" and set(result["per_class"]) == {str(c) for c in range(10)}
    per = result["per_class"]
    assert per["3"]["fid"] < min(per[c]["fid"] for c in per if c != "3")
    assert per["3"]["n_real"] == int((labels[600:] == 3).sum()) and per["3"]["n_synthetic"] == int((fake_labels == 3).sum())
    write_fidelity_csv(result, tmp_path / "fidelity.csv")
    lines = (tmp_path / "fidelity.csv").read_text().splitlines()
    assert lines[0].startswith("extractor,class") and all(l.startswith("pixels:test,") for l in lines[1:])
    assert len(lines) == 12
    header = lines[0].split(",")
    for name in ("fid", "precision", "recall", "density", "coverage"):
        assert {name, f"{name}_lower", f"{name}_upper"} <= set(header)
    row3 = dict(zip(header, lines[1 + 1 + 3].split(",")))
    assert row3["class"] == "3" and float(row3["fid_lower"]) <= float(row3["fid_upper"])
    assert row3["cmmd"] == ""  # CMMD is only computed on clip features


def test_classifier_extractor_uses_the_saved_backbone(tmp_path):
    from synthaug.train import create_classifier
    from synthaug.train.config import ModelConfig
    from synthaug.train.models import save_classifier

    splits = load_source("digits")
    torch.manual_seed(0)
    model = create_classifier(ModelConfig(name="small-cnn"), splits.train.schema, 1).eval()
    save_classifier(model, ModelConfig(name="small-cnn"), splits.train.schema, 1, 8, tmp_path / "model")
    extractor = create_extractor("classifier", tmp_path / "model")
    features = extractor(splits.test.subset(range(20)))
    assert features.shape == (20, model.backbone.num_features)
    assert extractor.label == f"classifier:{tmp_path / 'model'}"
    from synthaug.train.augment import eval_transform
    from synthaug.train.data import ImageSet

    test_set = ImageSet(splits.test, None, eval_transform(1, 8), 8)  # what `predict` feeds the classifier
    x = torch.stack([test_set[i][0] for i in range(20)])
    torch.testing.assert_close(features, model.backbone(x).detach())


def test_missing_weights_name_the_file(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(MissingFileError, match=str(missing)):
        create_extractor("inception", missing)
    with pytest.raises(MissingFileError, match="no-such-clip"):
        create_extractor("clip", str(tmp_path / "no-such-clip"))
    with pytest.raises(MissingFileError, match="classifier.json"):
        create_extractor("classifier", tmp_path)
    with pytest.raises(UnknownNameError, match="classifier, clip, dinov2, inception"):
        create_extractor("dino", None)
    assert FEATURES.names() == ["classifier", "clip", "dinov2", "inception"]


def test_clip_extractor_from_a_local_folder(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=12)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path / "clip")
    splits = load_source("digits")
    features = create_extractor("clip", str(tmp_path / "clip"))(splits.test.subset(range(6)))
    assert features.shape == (6, 12) and torch.isfinite(features).all()
    assert features.std(0).sum() > 0
