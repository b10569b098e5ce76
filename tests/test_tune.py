"""Tuning in one process on the 8×8 digits: pruning of a clearly bad configuration, retrain-best, the
sequential strategy, the synthetic-data knobs, and the ``tune:`` section's validation."""

from typing import ClassVar

import numpy as np
import optuna
import pytest
from PIL import Image
from optuna.trial import TrialState

import synthaug.tuning.objective as objective_module
from synthaug.config import build_config
from synthaug.errors import ConfigError, SettingError
from synthaug.runner import open_run
from synthaug.runner.tune import tune_context, tune_stage
from synthaug.generators import GENERATORS, Generated, Generator, GeneratorConfig, register_generator
from synthaug.report.tables import collect_rows
from synthaug.tuning.objective import per_class_subset
from synthaug.tuning.run import storage_url
from synthaug.utils import read_json


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny(tmp_path, tune: dict, **top) -> dict:
    raw = {"name": "t", "output_dir": str(tmp_path / "runs"), "progress": False,
           "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
           "train": {"model": {"name": "small-cnn"}, "epochs": 2, "batch_size": 32, "precision": "fp32",
                     "warmup_epochs": 0},
           "arms": [{"name": "real-ce", "train": {"loss": "ce", "mixing": "real-only"}}],
           "tune": {"plots": False, "heartbeat_interval": 1, "poll_seconds": 0.2, **tune}}
    raw.update(top)
    return raw


def run(raw, *, retrain=False):
    cfg = build_config(raw)
    exp = open_run(cfg)
    return exp, tune_stage(exp, cfg.tune, storage_url=storage_url(cfg.tune, exp.dir), study_name="s",
                                n_trials=cfg.tune.n_trials, retrain=retrain)


# ------------------------------------------------------------------------------------------ config
def test_default_space_is_table1():
    cfg = build_config({"tune": {}})
    space = cfg.tune.space
    assert (space["train.batch_size"].type, space["train.batch_size"].low, space["train.batch_size"].high) == \
        ("int", 64, 512)
    for name in ("train.lr", "train.weight_decay", "train.label_smoothing"):
        assert (space[name].low, space[name].high, space[name].log) == (1e-4, 1e-2, True)
    assert (space["train.model.dropout"].low, space["train.model.dropout"].high) == (0.15, 0.6)
    assert (space["train.betas.0"].low, space["train.betas.0"].high) == (0.87, 0.93)
    assert (space["train.betas.1"].low, space["train.betas.1"].high) == (0.99, 0.99999999)
    assert cfg.tune.direction == "minimize" and cfg.tune.n_trials == 15 and cfg.tune.epochs == 25
    assert build_config({"tune": {"objective": "best-val-accuracy"}}).tune.direction == "maximize"


@pytest.mark.parametrize("space, words", [
    ({"train.lr": {"low": 0.1, "high": 0.01}}, ["tune.space.train.lr", "low (0.1) must be below high (0.01)"]),
    ({"train.batch_size": {"type": "float", "low": 16, "high": 64}}, ["train.batch_size", "use type: int"]),
    ({"train.label_smoothing": {"low": 0.1, "high": 1.5}}, ["train.label_smoothing", "1.5"]),
    ({"train.betas.1": {"low": 0.99, "high": 1.0}}, ["train.betas.1", "[0, 1)"]),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, ["train.lr", "log: true needs low > 0"]),
    ({"train.nope": {"low": 0, "high": 1}}, ["train.nope", "no such training field", "train.model.dropout"]),
    ({"train.epochs": {"type": "int", "low": 1, "high": 5}}, ["train.epochs", "tune.epochs"]),
    ({"synthetic.set": {"type": "categorical", "choices": ["main", "gs9"]}}, ["synthetic.set", "gs9"]),
])
def test_bad_ranges_are_rejected_naming_the_field(space, words):
    with pytest.raises(ConfigError) as e:
        build_config({"tune": {"space": space}})
    for w in words:
        assert w in str(e.value)


def test_last_k_and_order_are_checked():
    with pytest.raises(ConfigError, match="tune.last_k"):
        build_config({"tune": {"epochs": 3, "last_k": 5}})
    with pytest.raises(ConfigError, match="tune.order"):
        build_config({"tune": {"strategy": "sequential", "order": ["train.lr"]}})


def test_synthetic_knobs_need_a_synthetic_arm(tmp_path):
    raw = tiny(tmp_path, {"space": {"synthetic.per_class": {"type": "int", "low": 1, "high": 5}}})
    with pytest.raises(SettingError, match="synthetic: none"):
        tune_context(open_run(build_config(raw)), build_config(raw).tune)


# ------------------------------------------------------------------------------------------ pruning + retrain
def test_bad_configuration_is_pruned_and_retrain_uses_the_best_params(tmp_path):
    raw = tiny(tmp_path, {"space": {"train.lr": {"low": 1e-7, "high": 1e-1, "log": True}}, "n_trials": 3,
                          "epochs": 2, "last_k": 1, "pruner": "median", "pruner_startup_trials": 2,
                          "pruner_warmup_epochs": 1, "retrain_epochs": 1})
    cfg = build_config(raw)
    url = storage_url(cfg.tune, cfg.run_dir)
    study = optuna.create_study(storage=url, study_name="s")
    for lr in (3e-3, 5e-3, 1e-7):  # the third learns nothing in 2 epochs: worse than the median
        study.enqueue_trial({"train.lr": lr})
    exp, result = run(raw, retrain=True)
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[2].params["train.lr"] == 1e-7 and max(trials[2].intermediate_values) == 1  # at epoch 2
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_params == best.params and result.best_trial == best.number

    folder = exp.dir / "train" / "tuned-real-ce"
    used = read_json(folder / "seed0" / "train_config.json")
    assert used["lr"] == best.params["train.lr"] and used["epochs"] == 1
    assert {k: v for k, v in used.items() if k not in ("lr", "epochs")} == \
        {k: v for k, v in cfg.arm_train(cfg.arms[0]).model_dump(mode="json").items() if k not in ("lr", "epochs")}
    tuned = read_json(folder / "tuned.json")
    assert tuned["params"] == best.params and tuned["best_value"] == best.value
    assert (folder / "seed0" / "metrics.json").is_file()
    rows = {r["arm"]: r for r in collect_rows(exp.dir)}
    assert rows["tuned-real-ce"]["overall"] == read_json(folder / "seed0" / "metrics.json")["accuracy"]
    assert "tuned-real-ce" in (exp.dir / "report" / "results.md").read_text()
    assert not any((exp.dir / "tune" / "trials" / "s").glob("trial*/last")), "trial checkpoints are removed"


# ------------------------------------------------------------------------------------------ sequential
def fake_train(seen):
    """A cheap stand-in for training: the loss is a fixed function of lr and weight decay."""

    def train(inputs, on_epoch_end):
        seen.append((inputs.workdir.parent.name, inputs.train.lr, inputs.train.weight_decay))
        loss = (np.log10(inputs.train.lr) + 2.5) ** 2 + (np.log10(inputs.train.weight_decay) + 3) ** 2
        for epoch in range(inputs.train.epochs):
            on_epoch_end(epoch, {"val_loss": loss + 0.1 / (epoch + 1), "val_acc": 1 / (1 + loss)})

    return train


def test_sequential_carries_the_best_values_forward(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(objective_module, "train_trial", fake_train(seen))
    raw = tiny(tmp_path, {"strategy": "sequential", "order": ["train.lr", "train.weight_decay"],
                          "space": {"train.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True},
                                    "train.lr": {"low": 1e-5, "high": 1e-1, "log": True}},
                          "n_trials": 4, "epochs": 2, "last_k": 1, "pruner": "none"})
    exp, result = run(raw)
    assert result.studies == ["s.1-train.lr", "s.2-train.weight_decay"]
    url = storage_url(build_config(raw).tune, exp.dir)
    first, second = (optuna.load_study(study_name=n, storage=url) for n in result.studies)
    assert len(first.trials) == len(second.trials) == 4
    best_lr = first.best_params["train.lr"]
    base_wd = build_config(raw).arm_train(build_config(raw).arms[0]).weight_decay
    assert all(step == "s.1-train.lr" and wd == base_wd for step, _, wd in seen[:4])  # lr searched, wd as configured
    assert all(step == "s.2-train.weight_decay" and lr == best_lr for step, lr, _ in seen[4:])  # lr held at step 1's best
    assert all(t.user_attrs["fixed"] == {"train.lr": best_lr} for t in second.trials)
    assert result.best_params == {"train.lr": best_lr, "train.weight_decay": second.best_params["train.weight_decay"]}
    assert result.best_value == second.best_value


def test_a_stopped_study_resumes_to_its_budget(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(objective_module, "train_trial", fake_train(seen))
    raw = tiny(tmp_path, {"space": {"train.lr": {"low": 1e-5, "high": 1e-1, "log": True}}, "n_trials": 3,
                          "epochs": 2, "last_k": 1, "pruner": "none"})
    run(raw)
    raw["tune"]["n_trials"] = 5  # a larger budget later: only the missing trials run
    exp, result = run(raw)
    assert len(seen) == 5
    study = optuna.load_study(study_name="s", storage=storage_url(build_config(raw).tune, exp.dir))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5


# ------------------------------------------------------------------------------------------ synthetic knobs
class ShadeConfig(GeneratorConfig):
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"shade"})
    shade: int = 0  # a sampling setting (as a guidance scale would be): a new set from the same model


if "test-shade" not in GENERATORS:

    @register_generator("test-shade")
    class ShadeGenerator(Generator):
        config_class = ShadeConfig
        calls = 0

        def sample(self, items):
            ShadeGenerator.calls += len(items)
            return [Generated(Image.fromarray(np.full((8, 8), self.config.shade, dtype=np.uint8)), {})
                    for _ in items]


def test_synthetic_sets_are_generated_once_and_subsampled_per_class(tmp_path, monkeypatch):
    sizes = []

    def train(inputs, on_epoch_end):
        syn = inputs.synthetic
        sizes.append(None if syn is None else
                     (int(np.asarray(syn.image(0)).mean()), syn.class_counts().max(), inputs.train.mixing))
        for epoch in range(inputs.train.epochs):
            on_epoch_end(epoch, {"val_loss": inputs.train.synthetic_share, "val_acc": 0.5})

    monkeypatch.setattr(objective_module, "train_trial", train)
    raw = tiny(tmp_path, {"arm": "synth", "n_trials": 6, "epochs": 1, "last_k": 1, "pruner": "none",
                          "synthetic_sets": {"bright": {"shade": 200}},
                          "space": {"synthetic.set": {"type": "categorical", "choices": ["main", "bright"]},
                                    "synthetic.per_class": {"type": "int", "low": 1, "high": 3},
                                    "train.mixing": {"type": "categorical", "choices": ["rsp", "real-only"]},
                                    "train.synthetic_share": {"low": 0.1, "high": 0.5}}},
               generator={"name": "test-shade", "params": {"shade": 50}}, judge={"enabled": False},
               plan={"strategy": "fixed", "counts": {str(d): 5 for d in range(10)}},
               arms=[{"name": "synth", "synthetic": "generated", "train": {"mixing": "rsp"}}])
    ShadeGenerator.calls = 0
    exp, _ = run(raw)
    planned = len(exp.plan_items)
    assert ShadeGenerator.calls == 2 * planned  # each set once, before the trials
    run({**raw, "tune": {**raw["tune"], "n_trials": 8}})
    assert ShadeGenerator.calls == 2 * planned  # a resumed search reuses both sets
    used = [s for s in sizes if s is not None]
    assert len(sizes) == 8 and used and {mean for mean, _, _ in used} <= {50, 200}
    assert all(most <= 3 and mixing == "rsp" for _, most, mixing in used)
    assert sum(s is None for s in sizes) == sum(
        t.params["train.mixing"] == "real-only" for t in optuna.load_study(
            study_name="s", storage=storage_url(build_config(raw).tune, exp.dir)).trials)
    assert (exp.dir / "tune" / "sets" / "bright" / "synthetic" / "done.json").is_file()


def test_per_class_subset_is_nested():
    cfg = build_config({"data": {"source": "digits"}})
    images = open_run(cfg).splits.train
    small, large = per_class_subset(images, 3, 0), per_class_subset(images, 7, 0)
    assert small.class_counts().tolist() == [3] * 10 and large.class_counts().max() == 7
    assert set(small.ids) <= set(large.ids)


# ------------------------------------------------------------------------------------------ command line
def test_tune_command_with_the_default_sqlite_storage(tmp_path, capsys):
    """The whole command with real (one-epoch) training: each trial's objective is its classifier's validation
    loss as its curves recorded it."""
    import csv

    import yaml

    from synthaug.cli import main

    raw = tiny(tmp_path, {"space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                    "train.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True}},
                          "n_trials": 4, "epochs": 1, "last_k": 1, "retrain_epochs": 1, "plots": True,
                          "pruner": "none"})
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["tune", str(config), "--threads", "1", "--n-trials", "3"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "t"
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run_dir / 'tune' / 'study.db'}")
    assert len(study.trials) == 3 and "3/3 finished" in out
    for trial in study.trials:  # trained: the value is the validation loss its curves.csv recorded
        rows = list(csv.DictReader((run_dir / "tune" / "trials" / "t" / f"trial{trial.number}" / "curves.csv").open()))
        assert len(rows) == 1 and trial.value == pytest.approx(float(rows[0]["val_loss"]))
        assert 0 < trial.value < 10
    assert len({t.value for t in study.trials}) == 3  # three learning rates, three trained classifiers
    assert f"Best mean-val-loss: {study.best_value:.4f}" in out and f"train.lr: {study.best_params['train.lr']}" in out
    accuracy = read_json(run_dir / "train" / "tuned-real-ce" / "seed0" / "metrics.json")["accuracy"]
    assert f"test accuracy {100 * accuracy:.2f}%" in out
    for kind in ("history", "importances", "parallel"):
        assert (run_dir / "tune" / f"t_{kind}.png").stat().st_size > 1000


def test_help_imports_neither_torch_nor_optuna():
    import subprocess
    import sys

    code = ("import sys; from synthaug.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'optuna') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
