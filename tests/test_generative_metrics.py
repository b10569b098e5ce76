"""The field's generative metrics beside FID: the Fréchet distance against torchmetrics' FID; CMMD against a
direct computation of its definition, ≈ 0 for one distribution and growing with a shift; density and coverage
on a hand-computed example and their expected values; seeded bootstrap intervals that match normal theory;
a DINOv2 extractor from a tiny local checkpoint that FD, KID, precision/recall and density/coverage run on;
the config's new extractor choice leaves existing fingerprints alone."""

import numpy as np
import pytest
import torch

from synthaug.data import load_source
from synthaug.errors import MissingFileError, SettingError
from synthaug.evaluate.features import create_extractor
from synthaug.evaluate.fidelity import PrecomputedFeatures, cmmd, fidelity, frechet_distance
from synthaug.evaluate.metrics import bootstrap_ci
from synthaug.evaluate.precision_recall import manifold_scores, precision_recall


@pytest.mark.parametrize("n, m, d", [(60, 90, 12), (9, 7, 32)])  # more samples than dimensions, and fewer
def test_frechet_distance_matches_torchmetrics_fid(n, m, d):
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((n, d)), 1.3 * rng.standard_normal((m, d)) + 0.2
    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(d))
    fid.update(torch.tensor(real), real=True)
    fid.update(torch.tensor(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(fid.compute()), rel=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


def direct_cmmd(x: np.ndarray, y: np.ndarray, *, unbiased: bool) -> float:
    """Jayasumana et al.'s definition written out pair by pair: unit-norm embeddings, k(a, b) =
    exp(-|a - b|² / (2 · 10²)), 1,000 × (mean k_xx + mean k_yy - 2 mean k_xy)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * 10.0 ** 2))

    def within(s):
        pairs = [k(s[i], s[j]) for i in range(len(s)) for j in range(len(s)) if not (unbiased and i == j)]
        return np.mean(pairs)

    return 1000 * (within(x) + within(y) - 2 * np.mean([k(a, b) for a in x for b in y]))


def test_cmmd_equals_its_definition_on_small_arrays():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((5, 5)) + 0.5
    assert cmmd(x, y) == pytest.approx(direct_cmmd(x, y, unbiased=False), rel=1e-9)
    assert cmmd(x, y, estimator="unbiased") == pytest.approx(direct_cmmd(x, y, unbiased=True), rel=1e-9)
    assert cmmd(x, 3.0 * x) == pytest.approx(0.0, abs=1e-9)  # only directions count: embeddings are normalised


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmmd_is_near_zero_for_one_distribution_and_grows_with_a_shift(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    shift = np.eye(16)[0]
    shifted = [cmmd(x, y + s * shift) for s in (0.5, 1.0, 2.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    # the reference estimator keeps a small positive bias (self-pairs); the unbiased one scatters around 0
    assert 0 < cmmd(x, y) < 0.15 * shifted[1]
    assert abs(cmmd(x, y, estimator="unbiased")) < 0.1 * cmmd(x, y + shift, estimator="unbiased")


def test_density_and_coverage_on_a_hand_computed_example():
    # real points 0, 1, 3, 6 on a line; fakes 0.5, 2.2 and an outlier at 10
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    fake = torch.tensor([[0.5], [2.2], [10.0]])
    # k = 1: real radii 1, 1, 2, 3. Fake 0.5 lies in the balls of 0 and 1, 2.2 in that of 3, 10 in none:
    # density = (2 + 1 + 0) / (1 · 3) = 1; coverage = 3 of 4 real balls hold a fake; precision = 2/3.
    # The outlier's fake ball (radius 7.8) swallows the real point 6, so recall = 1 while coverage is 0.75.
    one = manifold_scores(real, fake, k=1, density_k=1)
    assert one["density"].tolist() == [2.0, 1.0, 0.0] and one["coverage"].tolist() == [1.0, 1.0, 1.0, 0.0]
    summary = precision_recall(real, fake, k=1, density_k=1)
    assert summary["density"] == 1.0 and summary["coverage"] == 0.75
    assert summary["precision"] == pytest.approx(2 / 3) and summary["recall"] == 1.0
    # k = 2: real radii 3, 2, 3, 5; fake 0.5 in 3 balls, 2.2 in all 4, 10 in that of 6: density = 8 / (2 · 3)
    two = precision_recall(real, fake, k=1, density_k=2)
    assert two["density"] == pytest.approx(8 / 6) and two["coverage"] == 1.0 and two["density_k"] == 2
    # k is lowered for a small real set, and a set of one gives no figures
    assert precision_recall(real, fake, density_k=5)["density_k"] == 3
    assert precision_recall(real[:1], fake)["density"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_and_coverage_of_real_samples_and_of_a_collapsed_set(seed):
    g = torch.Generator().manual_seed(seed)
    real, same = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    figures = precision_recall(real, same)
    # Naeem et al.: E[density] = 1; E[coverage] = 1 - 2^-k for as many fakes as reals (k = 5: 0.969)
    assert 0.9 < figures["density"] < 1.1 and abs(figures["coverage"] - (1 - 2 ** -5)) < 0.03
    collapsed = real[:5].repeat(200, 1) + 0.05 * torch.randn(1000, 8, generator=g)  # five modes
    figures = precision_recall(real, collapsed)
    assert figures["precision"] == 1.0 and figures["coverage"] < 0.1


def test_bootstrap_interval_matches_normal_theory_and_is_seeded():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 2.0, size=400)
    lower, upper = bootstrap_ci(values, np.mean, n_boot=2000, confidence=0.95, seed=3)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert lower == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert upper == pytest.approx(values.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(values, np.mean, 200, 0.95, 3) == bootstrap_ci(values, np.mean, 200, 0.95, 3)
    assert bootstrap_ci(values, np.mean, 200, 0.95, 3) != bootstrap_ci(values, np.mean, 200, 0.95, 4)
    narrow = bootstrap_ci(values, np.mean, 2000, 0.5, 3)
    assert lower < narrow[0] < narrow[1] < upper
    # two samples are redrawn each at its own size: the difference of two means has the pooled standard error
    other = rng.normal(4.0, 1.0, size=100)
    lo, hi = bootstrap_ci((values, other), lambda a, b: a.mean() - b.mean(), n_boot=2000, confidence=0.95, seed=0)
    half = 1.96 * np.sqrt(values.var(ddof=1) / 400 + other.var(ddof=1) / 100)
    assert hi - lo == pytest.approx(2 * half, rel=0.15) and lo < values.mean() - other.mean() < hi
    assert bootstrap_ci(values[:1], np.mean) is None
    with pytest.raises(SettingError, match="confidence"):
        bootstrap_ci(values, np.mean, confidence=95)


def test_per_class_intervals_in_the_fidelity_output():
    g = torch.Generator().manual_seed(0)
    real, labels = torch.randn(300, 6, generator=g), np.repeat([0, 1, 2], 100)
    fake = torch.randn(300, 6, generator=g)
    fake[200:] = fake[200:] * 0.1  # class 2 collapsed toward the centre
    result = fidelity(real, labels, fake, labels, ["a", "b", "c"], extractor="clip:tiny", kid_subsets=5, n_boot=40)
    assert result["bootstrap"] == {"n_boot": 40, "confidence": 0.95, "seed": 0, "method": "percentile"}
    per = result["per_class"]
    for m in per.values():
        for name in ("precision", "recall", "density", "coverage"):
            assert m[f"{name}_lower"] <= m[name] <= m[f"{name}_upper"]
        assert m["fid_lower"] < m["fid_upper"] and m["cmmd_lower"] < m["cmmd_upper"]
    assert per["c"]["coverage_upper"] < per["a"]["coverage_lower"]  # the collapse shows beyond the noise
    assert result["overall"]["cmmd"] is not None and "cmmd_lower" not in result["overall"]
    again = fidelity(real, labels, fake, labels, ["a", "b", "c"], extractor="clip:tiny", kid_subsets=5, n_boot=40)
    assert again["per_class"] == per


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2") / "model"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=14,
                          patch_size=7)
    Dinov2Model(config).save_pretrained(folder)
    # the processor of Meta's checkpoints (shortest edge, centre crop, ImageNet statistics), at a tiny size
    BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 14, "width": 14},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def test_dinov2_extractor_gives_the_cls_token_and_feeds_every_metric(tiny_dinov2):
    from transformers import BitImageProcessor, Dinov2Model

    test = load_source("digits").test
    real, fake = test.subset(range(60)), test.subset(range(60, 120))
    extractor = create_extractor("dinov2", str(tiny_dinov2))
    assert extractor.label == f"dinov2:{tiny_dinov2}"
    f_real, f_fake = extractor(real, batch_size=16), extractor(fake)
    assert f_real.shape == (60, 16) and f_real.std(0).min() > 0
    # the CLS token after the final layer norm, of images prepared as the checkpoint's processor says
    model, processor = Dinov2Model.from_pretrained(tiny_dinov2).eval(), BitImageProcessor.from_pretrained(tiny_dinov2)
    pixels = processor(images=[real.image(i).convert("RGB") for i in range(4)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (4, 3, 14, 14)
    with torch.no_grad():
        encoded = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # before the final norm
        torch.testing.assert_close(f_real[:4], model.layernorm(encoded)[:, 0])
    result = fidelity(f_real, real.labels[:, 0], f_fake, fake.labels[:, 0], [str(c) for c in range(10)],
                      extractor=extractor.label, kid_subsets=5, n_boot=20)
    overall = result["overall"]
    assert result["extractor"] == f"dinov2:{tiny_dinov2}" and overall["cmmd"] is None
    for name in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
        assert np.isfinite(overall[name]), name
    assert frechet_distance(f_real.numpy(), f_real.numpy()) < 1e-6 < overall["fid"]


def test_dinov2_extractor_names_the_fix_when_the_model_is_absent(tmp_path, tiny_dinov2):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with pytest.raises(SettingError, match="extractor_source.*facebook/dinov2-large"):
        create_extractor("dinov2", None)
    missing = tmp_path / "no-such-dinov2"
    with pytest.raises(MissingFileError, match=f"{missing}.*facebook/dinov2-large"):
        create_extractor("dinov2", str(missing))
    # another architecture's checkpoint would load with random weights: refused
    clip = tmp_path / "clip"
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=14, patch_size=7,
                                                   projection_dim=8)).save_pretrained(clip)
    (clip / "preprocessor_config.json").write_text((tiny_dinov2 / "preprocessor_config.json").read_text())
    with pytest.raises(MissingFileError, match="not a DINOv2 checkpoint"):
        create_extractor("dinov2", str(clip))


def test_config_offers_dinov2_and_keeps_existing_fingerprints():
    from pydantic import ValidationError

    from synthaug.evaluate.config import FidelityConfig

    # the fidelity stage fingerprints this dump: at the defaults it is what it was before dinov2 came
    assert FidelityConfig().model_dump(mode="json") == {
        "enabled": True, "extractor": "classifier", "extractor_source": None, "k": 3, "kid_subset_size": 100,
        "kid_subsets": 50, "pixel_threshold": 0.05, "feature_ratio": 0.1, "pairs": 32}
    assert FidelityConfig(extractor="dinov2", extractor_source="facebook/dinov2-large").extractor == "dinov2"
    with pytest.raises(ValidationError, match="dinov2"):
        FidelityConfig(extractor="dino")
