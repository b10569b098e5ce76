"""The public Python API: README's "From Python" example runs as written on tiny data, ``synthaug.run``
returns what ``report/summary.json`` holds, and ``import synthaug`` stays light."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_returns_the_summary(tmp_path, monkeypatch, capsys):
    config = {"name": "api", "output_dir": str(tmp_path / "runs"), "progress": False, "seeds": [0],
              "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
              "train": {"model": {"name": "small-cnn"}, "epochs": 1, "batch_size": 64, "precision": "fp32"},
              "judge": {"enabled": False}, "evaluation": {"enabled": False},
              "arms": [{"name": "real-ce"}]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (From Python)", "exec"), namespace)  # noqa: S102

    run = tmp_path / "runs" / "api"
    summary = namespace["summary"]
    assert summary == json.loads((run / "report" / "summary.json").read_text())
    assert [r["arm"] for r in summary["rows"]] == ["real-ce"] and 0 < summary["rows"][0]["overall"] <= 1
    # the single-stage calls reused the run's finished stages (same record, nothing retrained)
    record = namespace["record"]
    assert record == json.loads((run / "train" / "real-ce" / "seed0" / "done.json").read_text())
    assert record["accuracy"] == summary["rows"][0]["overall"]
    out = capsys.readouterr().out
    assert "real-ce" in out and "imbalance ratio" in out.lower()

    # a changed arm is refused as on the command line, and redone when force_redo names it
    import pytest
    import synthaug
    from synthaug.errors import StageMismatch

    with pytest.raises(StageMismatch, match="train/real-ce/seed0"):
        synthaug.run(tmp_path / "experiment.yaml", ["train.lr=0.01"])
    again = synthaug.run(tmp_path / "experiment.yaml", ["train.lr=0.01"], force_redo=["train/real-ce"])
    redone = json.loads((run / "train" / "real-ce" / "seed0" / "done.json").read_text())
    assert redone["fingerprint"] != record["fingerprint"] and again["rows"][0]["overall"] == redone["accuracy"]


def test_import_synthaug_is_light_and_names_the_api():
    code = ("import sys, synthaug; light = 'torch' not in sys.modules; "
            "names = [synthaug.run, synthaug.open_run, synthaug.load_source, synthaug.create_generator, "
            "synthaug.open_store, synthaug.train_classifier, synthaug.train_arm, synthaug.data_stage]; "
            "print(light, all(callable(n) for n in names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
