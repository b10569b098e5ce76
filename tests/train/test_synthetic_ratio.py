"""The per-class synthetic ratio (``train.synthetic_ratio``): which synthetic images an arm uses per class or
shot group, validated with errors that name the key, resolved against the run's data before anything runs, and
left out of arm fingerprints at its default."""

import numpy as np
import pytest

from synthaug.config import build_config
from synthaug.data.stats import ShotThresholds
from synthaug.errors import ConfigError, SettingError
from synthaug.runner import open_run
from synthaug.runner.arms import arm_synthetic
from synthaug.runner.generate import synthetic_images
from synthaug.runner.pipeline import preflight
from synthaug.train.config import PERFORMANCE, TrainConfig
from synthaug.train.batch_composition import class_shares, keep_by_share

import noise_generator  # noqa: F401  (registers the test-noise generator)

CLASSES = ["cat", "dog", "owl", "emu"]
COUNTS = [150, 50, 5, 8]  # shot groups at the default thresholds (many > 100, few < 20): many, medium, few, few


# ---------------------------------------------------------------------------------------------- pure parts
def test_a_class_takes_its_own_share_else_its_shot_groups_else_all():
    shares = class_shares({"few": 1, "medium": 0.5, "many": 0, "emu": 0.25}, CLASSES, COUNTS, ShotThresholds())
    assert shares.tolist() == [0.0, 0.5, 1.0, 0.25]
    assert class_shares({"medium": 0}, CLASSES, COUNTS, ShotThresholds()).tolist() == [1, 0, 1, 1]
    assert class_shares(None, CLASSES, COUNTS, ShotThresholds()).tolist() == [1, 1, 1, 1]
    # the groups follow the thresholds: with many > 40, dog is many-shot too
    assert class_shares({"many": 0}, CLASSES, COUNTS, ShotThresholds(many=40)).tolist() == [0, 0, 1, 1]


def test_the_first_round_r_times_n_of_each_class_are_kept_in_plan_order():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0])[:, None]  # class 0: 5 images, 1: 4, 2: 3
    kept = keep_by_share(labels, [0.5, 0.0, 1.0])
    assert kept.tolist() == [0, 2, 3, 5, 6, 8]  # class 0: round(2.5) = 3 (half up), class 1: none, class 2: all
    for small, large in [(0.2, 0.6), (0.6, 1.0), (0.0, 0.2)]:  # a smaller share keeps a subset of a larger one's
        assert set(keep_by_share(labels, [small] * 3)) <= set(keep_by_share(labels, [large] * 3))
    assert keep_by_share(labels, [1, 1, 1]).tolist() == list(range(12))
    assert keep_by_share(np.zeros((0, 1), dtype=np.int64), [0.5]).tolist() == []


@pytest.mark.parametrize("ratio, words", [
    ({"gerbil": 0.5}, ["['gerbil']", "many, medium, few", "cat, dog, owl, emu"]),
    ({"Few": 1}, ["['Few']", "shot group"]),
])
def test_a_key_that_names_no_class_or_group_lists_the_valid_ones(ratio, words):
    with pytest.raises(SettingError) as e:
        class_shares(ratio, CLASSES, COUNTS, ShotThresholds())
    for w in words:
        assert w in str(e.value)


def test_a_class_named_like_a_shot_group_is_ambiguous():
    with pytest.raises(SettingError, match="both a class and a shot group"):
        class_shares({"few": 0}, ["few", "many"], [3, 300], ShotThresholds())


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("ratio, words", [
    ({"few": 1.5}, ["train.synthetic_ratio.few is 1.5", "[0, 1]"]),
    ({"cat": -0.1}, ["train.synthetic_ratio.cat is -0.1"]),
    ({}, ["train.synthetic_ratio is empty"]),
    ({" ": 0.5}, ["empty key"]),
    ({"few": True}, ["train.synthetic_ratio.few is True", "not true/false"]),
])
def test_shares_outside_0_1_are_rejected_naming_the_key(ratio, words):
    raw = {"arms": [{"name": "s", "synthetic": "generated",
                     "train": {"mixing": "combined", "synthetic_ratio": ratio}}]}
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    for w in words + ["arms.0.train.synthetic_ratio"]:
        assert w in str(e.value)


def test_a_ratio_on_a_real_only_arm_is_reported_as_ignored():
    with pytest.raises(ConfigError, match="train.synthetic_ratio is ignored.*'oversample'"):
        build_config({"arms": [{"name": "o", "train": {"mixing": "oversample", "synthetic_ratio": {"few": 1}}}]})


def test_the_default_leaves_the_training_dump_and_so_arm_fingerprints_unchanged():
    dump = TrainConfig().model_dump(mode="json", exclude=PERFORMANCE)  # what an arm's fingerprint hashes
    assert "synthetic_ratio" not in dump and "synthetic_ratio" not in TrainConfig(synthetic_ratio=None).model_dump()
    set_ = TrainConfig(mixing="combined", synthetic_ratio={"few": 1, "many": 0})
    assert set_.model_dump(mode="json", exclude=PERFORMANCE)["synthetic_ratio"] == {"few": 1.0, "many": 0.0}
    assert TrainConfig(**set_.model_dump()) == set_


# ---------------------------------------------------------------------------------------------- a run
def _raw(tmp_path, ratio):
    arm = {"name": "synth", "synthetic": "generated", "train": {"mixing": "combined"}}
    if ratio is not None:
        arm["train"]["synthetic_ratio"] = ratio
    return {"name": "r", "output_dir": str(tmp_path / "runs"), "progress": False,
            "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
            "generator": {"name": "test-noise"}, "judge": {"enabled": False},
            "plan": {"strategy": "fixed", "counts": {str(d): 5 for d in range(10)}},
            "arms": [arm]}


def test_an_arm_uses_each_classs_share_of_the_same_synthetic_store(tmp_path):
    """digits long-tailed at 10: classes 0-1 many-shot, 2-7 medium, 8-9 few (data.shots defaults)."""
    plain = open_run(build_config(_raw(tmp_path, None)))
    everything = synthetic_images(plain)
    assert everything.class_counts().tolist() == [5] * 10
    assert "synthetic_shares" not in plain.arm_parts(plain.cfg.arms[0], 0)  # the default's parts as before

    ratio = {"many": 0, "medium": 0.5, "few": 1, "3": 0.2}
    ctx = open_run(build_config(_raw(tmp_path, ratio)))
    used = arm_synthetic(ctx, ctx.cfg.arms[0])
    assert used.class_counts().tolist() == [0, 0, 3, 1, 3, 3, 3, 3, 5, 5]  # round half up: 2.5 -> 3, 1.0 -> 1
    first = {c: [i for i, label in zip(everything.ids, everything.labels[:, 0]) if label == c] for c in range(10)}
    for c, n in enumerate(used.class_counts()):  # the first n of the class in plan order
        assert [i for i, label in zip(used.ids, used.labels[:, 0]) if label == c] == first[c][:n]
    assert ctx.synthetic_set_fp == plain.synthetic_set_fp  # the same store: nothing generated again
    parts = ctx.arm_parts(ctx.cfg.arms[0], 0)
    assert parts["synthetic_shares"] == [0, 0, 0.5, 0.2, 0.5, 0.5, 0.5, 0.5, 1, 1]
    assert parts["train"]["synthetic_ratio"] == ratio


def test_an_unknown_class_fails_before_anything_is_generated(tmp_path):
    ctx = open_run(build_config(_raw(tmp_path, {"few": 1, "ten": 0.5})))
    with pytest.raises(SettingError) as e:
        preflight(ctx)
    assert "arm 'synth'" in str(e.value) and "['ten']" in str(e.value) and "0, 1, 2, 3" in str(e.value)
    assert not (ctx.dir / "synthetic").exists() and not (ctx.dir / "generator").exists()
