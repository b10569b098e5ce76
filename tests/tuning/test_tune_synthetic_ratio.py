"""Tuning the per-class synthetic ratio on the validation split: ``tune.synthetic_ratio`` (per shot group or per
class) and ``train.synthetic_ratio.<key>`` space entries, suggested by real Optuna trials that train the arm on
that share of each class's synthetic images, and never reading the test split."""

import dataclasses
import math

import numpy as np
import optuna
import pytest

import synthaug.tuning.objective as objective_module
from synthaug.config import build_config, fingerprint
from synthaug.errors import ConfigError, SettingError
from synthaug.runner import open_run
from synthaug.runner.tune import tune_context, tune_stage
from synthaug.tuning.run import storage_url
from synthaug.utils import read_json

import noise_generator  # noqa: F401  (registers the test-noise generator)

GROUPS = {"many": [0, 1], "medium": [2, 3, 4, 5, 6, 7], "few": [8, 9]}  # digits long-tailed at 10, data.shots


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny(tmp_path, tune: dict) -> dict:
    return {"name": "t", "output_dir": str(tmp_path / "runs"), "progress": False,
            "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
            "generator": {"name": "test-noise"}, "judge": {"enabled": False},
            "plan": {"strategy": "fixed", "counts": {str(d): 4 for d in range(10)}},
            "train": {"model": {"name": "small-cnn"}, "epochs": 1, "batch_size": 64, "precision": "fp32",
                      "warmup_epochs": 0},
            "arms": [{"name": "synth", "synthetic": "generated", "train": {"mixing": "combined"}}],
            "tune": {"plots": False, "n_trials": 2, "epochs": 1, "last_k": 1,
                     "pruner": "none", "objective": "best-val-accuracy", **tune}}


def spy_on_training(monkeypatch):
    """Records what each trial trains on, then trains it for real (the objective is a trained classifier's)."""
    seen, real_train = [], objective_module.train_trial

    def train(inputs, on_epoch_end):
        seen.append((inputs.train.synthetic_ratio, inputs.synthetic.class_counts().tolist()))
        real_train(inputs, on_epoch_end)

    monkeypatch.setattr(objective_module, "train_trial", train)
    return seen


def search(raw, study="s", retrain=False):
    cfg = build_config(raw)
    ctx = open_run(cfg)
    result = tune_stage(ctx, cfg.tune, storage_url=storage_url(cfg.tune, ctx.dir), study_name=study,
                        n_trials=cfg.tune.n_trials, retrain=retrain)
    return ctx, result


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("tune, words", [
    ({"synthetic_ratio": {"per": "group", "low": 0, "high": 1.5}}, ["tune.synthetic_ratio", "[0, 1]", "1.5"]),
    ({"synthetic_ratio": {"per": "shot", "low": 0, "high": 1}}, ["synthetic_ratio.per", "group", "class"]),
    ({"space": {"train.synthetic_ratio.few": {"type": "categorical", "choices": [0, 2]}}},
     ["tune.space.train.synthetic_ratio.few", "[0, 1]", "[2]"]),
    ({"synthetic_ratio": {"low": 0, "high": 1}, "space": {"train.synthetic_ratio.few": {"low": 0, "high": 1}}},
     ["keep one of the two"]),
])
def test_ratio_searches_are_checked_at_config_load(tune, words):
    with pytest.raises(ConfigError) as e:
        build_config({"tune": tune})
    for w in words:
        assert w in str(e.value)


def test_a_searched_key_that_names_no_class_lists_the_classes(tmp_path):
    raw = tiny(tmp_path, {"space": {"train.synthetic_ratio.ten": {"low": 0, "high": 1}}})
    cfg = build_config(raw)
    with pytest.raises(SettingError) as e:
        tune_context(open_run(cfg), cfg.tune)
    assert "['ten']" in str(e.value) and "many, medium, few" in str(e.value) and "0, 1, 2" in str(e.value)


def test_a_ratio_search_needs_an_arm_with_synthetic_images(tmp_path):
    raw = tiny(tmp_path, {"synthetic_ratio": {"low": 0, "high": 1}})
    raw["arms"] = [{"name": "real", "train": {"mixing": "real-only"}}]
    cfg = build_config(raw)
    with pytest.raises(SettingError, match="synthetic: none"):
        tune_context(open_run(cfg), cfg.tune)


def test_per_class_adds_one_parameter_per_class_after_the_sequential_order(tmp_path):
    raw = tiny(tmp_path, {"strategy": "sequential", "order": ["train.lr"],
                          "space": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True}},
                          "synthetic_ratio": {"per": "class", "type": "categorical", "choices": [0, 1]}})
    cfg = build_config(raw)
    tc = tune_context(open_run(cfg), cfg.tune)
    ratio = [f"train.synthetic_ratio.{d}" for d in range(10)]
    assert list(tc.tune.space) == ["train.lr", *ratio] and tc.tune.order == ["train.lr", *ratio]
    assert [s[0] for s in tc.tune.steps()] == ["train.lr", *ratio]


# ------------------------------------------------------------------------------------------ real trials
def test_trials_suggest_a_share_per_shot_group_and_train_on_it(tmp_path, monkeypatch):
    seen = spy_on_training(monkeypatch)
    raw = tiny(tmp_path, {"n_trials": 3, "synthetic_ratio": {"per": "group", "type": "categorical",
                                                             "choices": [0, 0.5, 1]}})
    ctx, result = search(raw)
    study = load(ctx, "s")
    keys = {f"train.synthetic_ratio.{g}" for g in GROUPS}
    assert all(set(t.params) == keys for t in study.trials) and len(seen) == 3
    for trial, (ratio, counts) in zip(study.trials, seen):
        assert ratio == {g: trial.params[f"train.synthetic_ratio.{g}"] for g in GROUPS}
        expected = [0] * 10
        for group, classes in GROUPS.items():
            for c in classes:  # 4 images per class: round(0.5 × 4) = 2
                expected[c] = round(ratio[group] * 4)
        assert counts == expected
        assert trial.state == optuna.trial.TrialState.COMPLETE and 0 < trial.value <= 1  # a validation accuracy
    assert set(result.best_params) == keys


def test_a_point_drawn_again_takes_the_earlier_trials_value_without_training(tmp_path, monkeypatch, capsys):
    """TPE draws the same categorical point again (twice in 16 trials of the per-group search on MNIST-LT):
    a trial on the same seed gives the same value, so it is not trained twice, and the repeat is said."""
    seen = spy_on_training(monkeypatch)
    raw = tiny(tmp_path, {"n_trials": 3, "synthetic_ratio": {"per": "group", "type": "categorical",
                                                             "choices": [0.5]}})  # one point: every draw repeats
    ctx, result = search(raw)
    first, *repeats = load(ctx, "s").trials
    assert len(seen) == 1 and "repeat_of" not in first.user_attrs
    assert [t.user_attrs["repeat_of"] for t in repeats] == [0, 0]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value == first.value for t in repeats)
    assert result.best_trial == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("trial 2 COMPLETE" in line and "the point of trial 0: its value, not retrained" in line
               for line in lines)


def test_trials_can_search_one_float_share_per_class_and_the_best_is_retrained(tmp_path, monkeypatch):
    seen = spy_on_training(monkeypatch)
    raw = tiny(tmp_path, {"n_trials": 1, "synthetic_ratio": {"per": "class", "low": 0, "high": 1}})
    ctx, result = search(raw, study="c", retrain=True)
    (trial,) = load(ctx, "c").trials
    assert sorted(trial.params) == sorted(f"train.synthetic_ratio.{d}" for d in range(10))
    ratio, counts = seen[0]
    assert counts == [math.floor(ratio[str(d)] * 4 + 0.5) for d in range(10)]
    assert math.isfinite(trial.value)
    folder = ctx.dir / "train" / "tuned-synth"
    assert read_json(folder / "seed0" / "train_config.json")["synthetic_ratio"] == ratio
    recorded = read_json(folder / "seed0" / "done.json")["parts"]  # each input's hash
    assert recorded["synthetic_shares"] == fingerprint([ratio[str(d)] for d in range(10)])
    assert result.retrained["params"] == trial.params


def test_the_search_never_reads_the_test_split(tmp_path, monkeypatch):
    """Every test image raises when decoded: trials train on the training split and score on validation."""
    spy_on_training(monkeypatch)
    raw = tiny(tmp_path, {"space": {"train.synthetic_ratio.few": {"type": "categorical", "choices": [0, 1]},
                                    "train.synthetic_ratio.many": {"type": "categorical", "choices": [0, 1]}}})
    cfg = build_config(raw)
    ctx = open_run(cfg)
    test = ctx.splits.test

    def poisoned():
        raise AssertionError("the test split was read during tuning")

    ctx.splits.test = dataclasses.replace(test, pixels=np.array([poisoned] * len(test), dtype=object), paths=None)
    with pytest.raises(AssertionError, match="test split was read"):
        ctx.splits.test.image(0)  # the poison works
    result = tune_stage(ctx, cfg.tune, storage_url=storage_url(cfg.tune, ctx.dir), study_name="p", n_trials=2,
                        retrain=False)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in load(ctx, "p").trials)
    assert set(result.best_params) == {"train.synthetic_ratio.few", "train.synthetic_ratio.many"}


def load(ctx, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{ctx.dir / 'tune' / 'study.db'}")


def test_trials_of_a_filtered_arm_train_on_the_filtered_set(tmp_path, monkeypatch):
    """An arm with use_filters trains on the images the filters selected; its tuning trials must too."""
    seen = spy_on_training(monkeypatch)
    raw = tiny(tmp_path, {"n_trials": 1, "space": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True}}})
    raw["plan"]["overgenerate"] = 2.0
    raw["filters"] = [{"name": "confidence", "classifier_arm": "real-ce", "keep_top_percent": 50}]
    raw["arms"] = [{"name": "real-ce"},
                   {"name": "synth", "synthetic": "generated", "use_filters": True, "train": {"mixing": "combined"}}]
    raw["tune"]["arm"] = "synth"
    ctx, _ = search(raw)
    selected = [r for r in map(__import__("json").loads, (ctx.dir / "filter" / "decisions.jsonl").read_text()
                               .splitlines()) if r["selected"]]
    assert len(seen) == 1 and sum(seen[0][1]) == len(selected) == 40  # not the 80 generated


@pytest.mark.parametrize("path", ["train.translation_labels", "train.image_cache_mb"])
def test_settings_that_are_not_hyperparameters_cannot_be_searched(path):
    with pytest.raises(ConfigError, match=f"tune.space.{path} cannot be searched"):
        build_config({"tune": {"space": {path: {"type": "categorical", "choices": [1, 2]}}}})
