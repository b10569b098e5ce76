"""Studies: replacement swaps exactly the requested count per class; CAS is above chance for real images
relabelled as synthetic and at chance for shuffled labels; the rarest classes are found."""

import numpy as np
import pytest

from synthaug.data import load_source
from synthaug.data.schema import LabeledImages
from synthaug.data.stats import ShotThresholds
from synthaug.errors import SettingError
from synthaug.evaluate.studies import (
    classification_accuracy_score, rarest_classes, replace_real, replacement_counts,
)
from synthaug.train import TrainConfig


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def longtail(images: LabeledImages, counts) -> LabeledImages:
    idx = np.concatenate([np.flatnonzero(images.labels[:, 0] == c)[:n] for c, n in enumerate(counts)])
    return images.subset(idx)


def test_replacement_counts_round_half_up():
    assert replacement_counts([100, 50, 25, 8, 4], 2).tolist() == [2, 1, 1, 0, 0]
    assert replacement_counts([100, 50, 25, 8, 4], 12).tolist() == [12, 6, 3, 1, 0]
    assert replacement_counts([380, 4], 12.5).tolist() == [48, 1]


@pytest.mark.parametrize("percent", [2, 6, 12, 20])
def test_replace_real_swaps_exactly_the_requested_counts(digits, percent):
    counts = [90, 75, 60, 40, 30, 20, 12, 8, 5, 3]
    real = longtail(digits.train, counts)
    fake = digits.test  # 30 per class, standing in for synthetic images
    kept, taken = replace_real(real, fake, percent, seed=0)
    expected = replacement_counts(counts, percent)
    assert (real.class_counts() - kept.class_counts()).tolist() == expected.tolist()
    assert taken.class_counts().tolist() == expected.tolist()
    assert (kept.class_counts() + taken.class_counts()).tolist() == counts  # class sizes unchanged
    assert set(kept.ids) <= set(real.ids) and len(set(kept.ids)) == len(kept)
    # a larger percentage drops a superset of a smaller one's images
    kept_more, _ = replace_real(real, fake, percent + 10, seed=0)
    assert set(kept_more.ids) <= set(kept.ids)


def test_replace_real_names_a_class_without_enough_synthetic_images(digits):
    real = longtail(digits.train, [120] * 10)
    with pytest.raises(SettingError, match=r"class '0' needs 60 synthetic images, but the synthetic set has 30"):
        replace_real(real, digits.test, 50, seed=0)


def test_rarest_classes():
    assert rarest_classes([380, 4, 228, 4, 11], 2) == [1, 3]


def test_cas_above_chance_for_real_images_and_at_chance_for_shuffled_labels(digits, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.005, warmup_epochs=0)
    train, test = digits.train, digits.test
    counts = [train.class_counts()]
    options = {"test": test, "train_counts": counts, "thresholds": ShotThresholds(), "seed": 0}
    real_as_synthetic = classification_accuracy_score(train, cfg, tmp_path / "real", **options)
    labels = np.random.default_rng(0).permutation(train.labels)
    shuffled = LabeledImages(train.schema, labels, train.ids, pixels=train.pixels, mode=train.mode)
    shuffled_cas = classification_accuracy_score(shuffled, cfg, tmp_path / "shuffled", **options)
    assert real_as_synthetic["accuracy"] > 0.6, real_as_synthetic["accuracy"]
    assert shuffled_cas["accuracy"] < 0.25, shuffled_cas["accuracy"]
    assert real_as_synthetic["trained_classes"] == [str(c) for c in range(10)]
    assert (tmp_path / "real" / "metrics.json").is_file() and (tmp_path / "real" / "per_class.csv").is_file()


def test_few_shot_probe_learns_more_from_more_shots_and_from_good_synthetic_rows():
    import torch

    from synthaug.evaluate.studies import few_shot

    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(5, 16, generator=g)

    def sample(n_per_class):
        y = np.repeat(np.arange(5), n_per_class)
        return centres[y] + 1.5 * torch.randn(len(y), 16, generator=g), y

    train_x, train_y = sample(40)
    val_x, val_y = sample(40)
    synth_x, synth_y = sample(40)  # "synthetic" rows from the true class distributions
    options = {"trials": 3, "epochs": 40, "lr": 0.05, "seed": 0}
    rows = few_shot(train_x, train_y, val_x, val_y, 5, shots=[1, 16], synth_x=synth_x, synth_y=synth_y, **options)
    by = {(r["shots"], r["synthetic"]): r for r in rows}
    assert by[(1, False)]["mean"] > 0.3 and by[(1, False)]["real"] == 5 and by[(16, False)]["real"] == 80
    assert by[(16, False)]["mean"] > by[(1, False)]["mean"]
    assert by[(1, True)]["mean"] > by[(1, False)]["mean"] and by[(1, True)]["synthetic_rows"] == 50
    # synthetic rows with shuffled labels do not help
    wrong = few_shot(train_x, train_y, val_x, val_y, 5, shots=[1], synth_x=synth_x,
                     synth_y=np.random.default_rng(0).permutation(synth_y), **options)
    assert wrong[1]["mean"] < by[(1, True)]["mean"]
