"""A tiny end-to-end `synthaug run` on the 8×8 digits: every stage, the run folder, the table, re-runs."""

import csv
import json

import pytest
import yaml

from synthaug.cli import main

TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "progress": False,
    "data": {"source": "digits", "longtail": {"imbalance_ratio": 20}},
    "generator": {"name": "ddpm", "params": {"block_out_channels": [16, 32], "layers_per_block": 1,
                                             "train_steps": 3, "batch_size": 16, "sampling_steps": 2,
                                             "precision": "fp32"}},
    "plan": {"strategy": "fixed", "counts": {"8": 12, "9": 12}},
    "train": {"epochs": 1, "batch_size": 32},
    "judge": {"epochs": 1},
    "evaluation": {"enabled": False},  # the studies are tested in test_report.py
}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs")}))
    return path


@pytest.mark.slow
def test_run_writes_every_stage_and_the_table(config, tmp_path, capsys):
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "tiny"
    for arm in ("real-ce", "real-bsm", "oversample", "synth-combined", "synth-balanced-batch", "synth-bsm",
                "synth-oversample", "pseudo-combined"):
        assert f"| {arm} |" in out
        for seed in (0, 1):
            folder = run / "train" / arm / f"seed{seed}"
            metrics = json.loads((folder / "metrics.json").read_text())
            assert 0 <= metrics["accuracy"] <= 1
            assert (folder / "model" / "model.safetensors").is_file() and (folder / "curves.csv").is_file()
    assert " ± " in out  # mean ± std over two seeds
    assert (run / "data" / "class_counts.png").is_file()
    synth = [json.loads(line) for line in (run / "synthetic" / "metadata.jsonl").read_text().splitlines()]
    assert sorted({r["label"] for r in synth}) == ["8", "9"] and len(synth) == 24
    pseudo = (run / "pseudo" / "metadata.jsonl").read_text().splitlines()
    assert len(pseudo) == 24 and all(json.loads(p)["method"] == "pseudo-label" for p in pseudo)
    rows = list(csv.DictReader(open(run / "report" / "results.csv")))
    assert [r["arm"] for r in rows][:2] == ["real-ce", "real-bsm"] and rows[0]["seeds"] == "2"
    assert json.loads((run / "judge" / "done.json").read_text())["synthetic_label_accuracy"].keys() == {"8", "9"}

    # a re-run skips every finished stage and prints the same table
    before = (run / "train" / "real-ce" / "seed0" / "done.json").stat().st_mtime
    assert main(["run", str(config)]) == 0
    assert (run / "train" / "real-ce" / "seed0" / "done.json").stat().st_mtime == before
    assert capsys.readouterr().out.count("| real-ce |") == 1

    # a changed config does not silently reuse a finished stage
    assert main(["train", str(config), "--arm", "real-ce", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "nothing was run or written" in err and "train/real-ce/seed0 (completed with other inputs: train changed)" in err


def test_stats_command_and_bad_config(config, tmp_path, capsys):
    assert main(["stats", str(config)]) == 0
    out = capsys.readouterr().out
    assert "imbalance ratio" in out and "few" in out
    assert main(["stats", str(config), "--set", "train.loss=focal"]) == 2
    assert "train.loss" in capsys.readouterr().err
