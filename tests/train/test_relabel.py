"""Stand-ins for the rarer classes made from real images of other classes (``train.relabel``): each class filled
up to the largest class's count with training images of the other classes, labelled with a mixture of the class
filled and the image's own; they join the synthetic part, so a real-only arm can use them without a generator."""

import numpy as np
import pytest
from PIL import Image

import synthaug.tuning.objective as objective_module
from synthaug.config import build_config
from synthaug.data import LabeledImages, LabelSchema
from synthaug.errors import ConfigError, SettingError
from synthaug.runner import open_run
from synthaug.runner.arms import arm_synthetic, train_arm
from synthaug.runner.baseline import baseline_arm
from synthaug.runner.tune import tune_stage
from synthaug.train.config import PERFORMANCE, TrainConfig
from synthaug.train.data import joined_images, relabelled_images
from synthaug.train.loop import train_classifier
from synthaug.tuning.run import storage_url

import noise_generator  # noqa: F401  (registers the test-noise generator)

SCHEMA = LabelSchema.single(["a", "b", "c"])

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _real(labels=(0,) * 8 + (1,) * 3 + (2,)):
    labels = np.asarray(labels)
    pixels = np.random.default_rng(0).integers(0, 256, (len(labels), 6, 6), dtype=np.uint8)
    return LabeledImages(SCHEMA, labels, [f"r{i}" for i in range(len(labels))], pixels=pixels, mode="L")


def test_every_class_is_filled_from_the_other_classes_with_the_mixture_label():
    real = _real()
    made = relabelled_images(real, weight=0.3, target=None, seed=4)
    assert made.class_counts().tolist() == [0, 5, 7]  # up to the largest class's 8
    source_of = {i: k for k, i in enumerate(real.ids)}
    for k, (image_id, c) in enumerate(zip(made.ids, made.labels[:, 0])):
        src = source_of[image_id.rsplit(":", 1)[1]]
        a = real.labels[src, 0]
        assert a != c  # never an image of the class it stands in for
        expected = np.zeros(3, np.float32)
        expected[c] += 0.3
        expected[a] += 0.7
        np.testing.assert_allclose(made.targets[k], expected)
        np.testing.assert_array_equal(np.asarray(made.image(k)), real.pixels[src])  # the image itself, unchanged
    assert len(set(made.ids)) == len(made)
    # class c (5 stand-ins) draws from the 9 images of classes a and c without replacement
    assert len({i.rsplit(":", 1)[1] for i in made.ids if i.startswith("relabel:1:")}) == 5
    again = relabelled_images(real, weight=0.3, target=None, seed=4)
    assert again.ids == made.ids  # one draw per seed, the same for every classifier seed
    assert relabelled_images(real, weight=0.3, target=None, seed=5).ids != made.ids


def test_a_target_fills_every_class_to_it_drawing_again_when_the_others_are_too_few():
    made = relabelled_images(_real((0,) * 3 + (1,) * 2), weight=0.5, target=6, seed=0)
    assert made.class_counts().tolist() == [3, 4, 6]  # class c has no real image: all 5 others, drawn again
    assert relabelled_images(_real(), weight=0.5, target=2, seed=0).class_counts().tolist() == [0, 0, 1]


def test_multi_label_data_and_weights_outside_0_1_are_refused():
    two = LabelSchema.from_dict({"x": ["p", "q"], "y": ["u", "v"]})
    multi = LabeledImages(two, np.zeros((2, 2), np.int64), ["m0", "m1"], pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(SettingError, match="single-label data.*2 label groups"):
        relabelled_images(multi, weight=0.3, target=None, seed=0)
    with pytest.raises(SettingError, match=r"weight must be in \(0, 1\)"):
        relabelled_images(_real(), weight=1.0, target=None, seed=0)
    with pytest.raises(ValueError, match="weight"):
        TrainConfig(mixing="combined", relabel={"weight": 1.0})


def test_files_and_arrays_join_into_one_set_with_one_hot_targets_where_a_part_has_none(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"s{i}.png")
        Image.fromarray(np.full((6, 6), 40 * (i + 1), np.uint8)).save(paths[-1])
    made = LabeledImages(SCHEMA, np.array([2, 1]), ["s0", "s1"], paths=paths, mode="L")
    stand_ins = relabelled_images(_real(), weight=0.25, target=None, seed=0)
    joined = joined_images([made, stand_ins])
    assert len(joined) == 2 + len(stand_ins) and joined.ids[:2] == ["s0", "s1"]
    assert np.asarray(joined.image(1)).max() == 80
    np.testing.assert_array_equal(np.asarray(joined.image(2)), np.asarray(stand_ins.image(0)))
    np.testing.assert_allclose(joined.targets[:2], [[0, 0, 1], [0, 1, 0]])
    np.testing.assert_allclose(joined.targets[2:], stand_ins.targets)
    assert joined.subset([3]).ids == [stand_ins.ids[1]]


def test_off_by_default_and_left_out_of_the_fingerprint_then():
    assert "relabel" not in TrainConfig().model_dump(mode="json", exclude=PERFORMANCE)
    on = TrainConfig(mixing="oversample-synthetic", relabel={"weight": 0.24})
    assert on.model_dump(mode="json", exclude=PERFORMANCE)["relabel"] == {"weight": 0.24, "target": None}
    assert on.soft_targets and not TrainConfig(mixing="combined").soft_targets
    assert TrainConfig(**on.model_dump()) == on


# ---------------------------------------------------------------------------------------------- a run
def _raw(tmp_path, arms):
    return {"name": "r", "output_dir": str(tmp_path / "runs"), "progress": False, "seeds": [0],
            "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
            "generator": {"name": "test-noise"}, "judge": {"enabled": False}, "evaluation": {"enabled": False},
            "plan": {"strategy": "fixed", "counts": {str(d): 3 for d in range(10)}},
            "train": {"epochs": 1, "batch_size": 32}, "arms": arms}


def test_a_real_only_arm_trains_on_stand_ins_without_a_generator(tmp_path):
    arms = [{"name": "relabel", "train": {"mixing": "oversample-synthetic", "relabel": {"weight": 0.24}}},
            {"name": "synth", "synthetic": "generated",
             "train": {"mixing": "oversample-synthetic", "relabel": {"weight": 0.24}}},
            {"name": "plain", "train": {"mixing": "oversample"}}]
    ctx = open_run(build_config(_raw(tmp_path, arms)))
    relabel, synth, plain = ctx.cfg.arms
    counts = ctx.splits.train.class_counts()
    stand_ins = arm_synthetic(ctx, relabel)
    assert stand_ins.class_counts().tolist() == (counts.max() - counts).tolist()
    assert np.all(stand_ins.targets.max(1) == pytest.approx(0.76))  # the image's own class keeps 1 − 0.24
    record = train_arm(ctx, relabel, 0)
    assert record["synthetic"] == len(stand_ins)
    assert not (ctx.dir / "generator").exists()  # no generator was trained for it
    both = arm_synthetic(ctx, synth)
    assert both.class_counts().tolist() == (3 + counts.max() - counts).tolist()  # generated, then stand-ins
    assert both.ids[len(both) - len(stand_ins):] == stand_ins.ids
    assert "relabel_seed" in ctx.arm_parts(relabel, 0) and "relabel_seed" not in ctx.arm_parts(plain, 0)


def test_stand_ins_need_a_mixing_that_trains_on_synthetic_images(tmp_path):
    with pytest.raises(ConfigError, match="train.relabel is ignored.*'oversample' uses real images only"):
        build_config(_raw(tmp_path, [{"name": "o", "train": {"mixing": "oversample", "relabel": {"weight": 0.2}}}]))
    with pytest.raises(ConfigError, match="needs synthetic images.*train.relabel"):
        build_config(_raw(tmp_path, [{"name": "o", "train": {"mixing": "oversample-synthetic"}}]))


def test_an_arm_with_stand_ins_is_not_the_studies_baseline(tmp_path):
    arms = [{"name": "relabel", "train": {"mixing": "oversample-synthetic", "relabel": {"weight": 0.24}}},
            {"name": "plain", "train": {"mixing": "oversample"}}]
    assert baseline_arm(build_config(_raw(tmp_path, arms))).name == "plain"
    named = {**_raw(tmp_path, arms), "evaluation": {"baseline_arm": "relabel"}}
    with pytest.raises(SettingError, match="baseline_arm 'relabel'.*no train.relabel.*\\['plain'\\]"):
        baseline_arm(build_config(named))


def test_tuning_trials_of_an_arm_with_stand_ins_train_on_them(tmp_path, monkeypatch):
    seen, real_train = [], objective_module.train_trial

    def spy(inputs, on_epoch_end):
        seen.append(inputs.synthetic)
        real_train(inputs, on_epoch_end)

    monkeypatch.setattr(objective_module, "train_trial", spy)
    arms = [{"name": "relabel", "train": {"mixing": "oversample-synthetic", "relabel": {"weight": 0.24}}}]
    raw = {**_raw(tmp_path, arms), "tune": {"arm": "relabel", "space": {"train.lr": {"low": 1e-3, "high": 1e-2,
                                                                                     "log": True}},
                                            "n_trials": 1, "epochs": 1, "last_k": 1, "pruner": "none",
                                            "plots": False}}
    cfg = build_config(raw)
    ctx = open_run(cfg)
    tune_stage(ctx, cfg.tune, storage_url=storage_url(cfg.tune, ctx.dir), study_name="s", n_trials=1)
    counts = ctx.splits.train.class_counts()
    assert len(seen) == 1 and seen[0].class_counts().tolist() == (counts.max() - counts).tolist()
    assert seen[0].ids == arm_synthetic(ctx, ctx.cfg.arms[0]).ids  # the arm's own stand-ins


def test_training_with_relabel_on_images_without_targets_says_how_to_add_the_stand_ins(tmp_path):
    real = _real()
    cfg = TrainConfig(epochs=1, mixing="oversample-synthetic", relabel={"weight": 0.24})
    with pytest.raises(SettingError, match="relabel.weight is 0.24.*with_stand_ins"):
        train_classifier(real, real.subset([0, 1]), cfg, tmp_path / "w", progress=False)
