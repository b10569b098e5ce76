"""Stage records protect exactly what each stage depends on: sampling changes regenerate the set but keep the
model, a growing plan reuses images, reporting and performance knobs invalidate nothing, the judge retrains
only for what it trains with, changed data is noticed, and a rejected re-run leaves the run folder as it was."""

import json

import pytest
import yaml

from synthaug.cli import main
from synthaug.config import build_config
from synthaug.errors import StageMismatch
from synthaug.runner import open_run
from synthaug.runner.generate import fit_generator, synthetic_images, synthetic_stage

TINY = {
    "name": "records",
    "seeds": [0],
    "progress": False,
    "data": {"source": "digits", "longtail": {"imbalance_ratio": 20}},
    "generator": {"name": "ddpm", "params": {"block_out_channels": [16, 32], "layers_per_block": 1,
                                             "train_steps": 2, "batch_size": 8, "sampling_steps": 2,
                                             "precision": "fp32"}},
    "plan": {"strategy": "fixed", "counts": {"8": 4, "9": 4}},
    "train": {"epochs": 1, "batch_size": 64},
    "judge": {"enabled": False},
    "evaluation": {"enabled": False},  # the studies are tested in test_report.py
    "arms": [{"name": "real-ce"},
             {"name": "synth-combined", "synthetic": "generated", "train": {"mixing": "combined"}}],
}


def experiment(tmp_path, *overrides):
    return open_run(build_config({**TINY, "output_dir": str(tmp_path)}, list(overrides)))


def record(run, rel):
    return json.loads((run / rel / "done.json").read_text())


@pytest.mark.slow
def test_the_judge_retrains_only_for_settings_it_trains_with(tmp_path):
    from synthaug.runner.judge import judge_stage

    judged = ["judge.enabled=true", "judge.epochs=1"]
    first = judge_stage(experiment(tmp_path, *judged))
    run = experiment(tmp_path).dir
    weights = next((run / "judge" / "model").glob("*.safetensors"))
    trained = weights.stat().st_mtime_ns
    # the arms' epochs and loss: the judge trains judge.epochs with cross-entropy on real images only
    assert judge_stage(experiment(tmp_path, *judged, "train.epochs=3", "train.loss=balanced-softmax")) == first
    assert weights.stat().st_mtime_ns == trained and not list(run.glob("judge.stale-*"))
    # the learning rate it trains with: redone (the old judge is deleted once the new one is complete)
    judge_stage(experiment(tmp_path, *judged, "train.lr=0.002"))
    assert weights.stat().st_mtime_ns != trained and not list(run.glob("judge.stale-*"))


@pytest.mark.slow
def test_sampling_change_regenerates_the_set_but_keeps_the_model(tmp_path):
    exp = experiment(tmp_path)
    synthetic_stage(exp)
    run = exp.dir
    model_mtime = (run / "generator" / "model" / "unet" / "config.json").stat().st_mtime
    generator_record = record(run, "generator")

    changed = experiment(tmp_path, "generator.params.guidance_scale=3.0")
    store = synthetic_stage(changed)
    assert record(run, "generator") == generator_record  # the model was not retrained ...
    assert (run / "generator" / "model" / "unet" / "config.json").stat().st_mtime == model_mtime
    assert record(run, "synthetic")["generated_now"] == 8  # ... but every image was made again
    assert {r["guidance_scale"] for r in store.records()} == {3.0}
    assert not list(run.glob("synthetic.stale-*"))  # the old set is deleted once the new one is complete

    # a sampling-only change leaves the generator stage alone; a training change is named in the error
    with pytest.raises(StageMismatch, match="generator changed"):
        fit_generator(experiment(tmp_path, "generator.params.train_steps=3"))


@pytest.mark.slow
def test_growing_plan_reuses_generated_images(tmp_path):
    synthetic_stage(experiment(tmp_path))
    grown = experiment(tmp_path, "plan.counts={'8': 6, '9': 4}")
    synthetic_stage(grown)
    assert record(grown.dir, "synthetic")["generated_now"] == 2
    assert len(synthetic_images(grown)) == 10
    # a smaller plan trains on its own items only, though the store keeps the others
    shrunk = experiment(tmp_path, "plan.counts={'8': 2, '9': 4}")
    assert len(synthetic_images(shrunk)) == 6


@pytest.mark.slow
def test_reporting_and_performance_knobs_invalidate_nothing(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path)}))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "records"
    done = {rel: record(run, rel) for rel in ("data", "generator", "synthetic", "train/real-ce/seed0",
                                              "train/synth-combined/seed0")}
    assert not (run / "train" / "real-ce" / "seed0" / "last").exists()  # removed once done.json is written
    capsys.readouterr()
    assert main(["run", str(path), "--set", "data.shots.many=5", "--set", "data.shots.few=2",
                 "--set", "train.num_workers=1", "--set", "plan.batch_size=3"]) == 0
    assert {rel: record(run, rel) for rel in done} == done  # nothing retrained or regenerated
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["thresholds"] == {"many": 5, "few": 2}  # but statistics follow the new thresholds
    assert "| real-ce |" in capsys.readouterr().out


@pytest.mark.slow
def test_changed_data_is_noticed_and_a_rejected_run_keeps_its_config(tmp_path):
    exp = experiment(tmp_path)
    fit_generator(exp)
    saved = (exp.dir / "config.yaml").read_text()
    other = experiment(tmp_path, "data.longtail.imbalance_ratio=10")  # other images in the training split
    with pytest.raises(StageMismatch, match="data changed"):
        fit_generator(other)
    assert (exp.dir / "config.yaml").read_text() == saved


def test_arm_setting_that_would_be_ignored_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"arms\.0\.train\.synthetic_share"):
        build_config({**TINY, "arms": [{"name": "a", "train": {"synthetic_share": 0.7}}]})
    with pytest.raises(ValueError, match=r"train\.synthetic_share is read by no arm"):
        build_config({**TINY, "train": {"synthetic_share": 0.7}})
    # read by one arm: fine at the top level
    build_config({**TINY, "train": {"synthetic_share": 0.7},
                  "arms": [{"name": "a"}, {"name": "b", "synthetic": "generated",
                                            "train": {"mixing": "balanced-batch"}}]})


def test_default_arms_include_synthetic_balanced_softmax():
    cfg = build_config({})
    arm = cfg.arm("synth-bsm")
    assert arm.synthetic == "generated" and cfg.arm_train(arm).loss == "balanced-softmax"


def test_arm_names_are_folder_names():
    with pytest.raises(ValueError, match=r"arms\.0\.name"):
        build_config({"arms": [{"name": "../escape"}]})
