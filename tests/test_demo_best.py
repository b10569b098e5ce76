"""configs/demo_best.yaml is the setup whose numbers it quotes: the `translate` run of bench/levers.py, arm
translate-soft (BENCHMARKS.md, issue 25). If either side changes, the quoted measurement no longer applies."""

import importlib.util
from pathlib import Path

from synthaug.config import load_config

ROOT = Path(__file__).parents[1]


def _levers():
    spec = importlib.util.spec_from_file_location("bench_levers", ROOT / "bench" / "levers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_best_is_the_measured_translate_soft_setup():
    levers = _levers()
    best = load_config(ROOT / "configs" / "demo_best.yaml")
    measured = load_config(ROOT / "configs" / "demo.yaml", levers.overrides("translate", 0, "", [], False))
    for part in ("data", "generator", "plan", "filters", "train", "seed"):
        assert getattr(best, part) == getattr(measured, part), part
    arms = {a.name: a for a in measured.arms}
    for arm in best.arms:
        assert arm.model_dump() == arms[arm.name].model_dump(), arm.name
        assert best.arm_train(arm) == measured.arm_train(arms[arm.name]), arm.name
    assert best.arm_train(best.arms[1]).translation_labels.mode == "soft"
    assert best.evaluation.baseline_arm == measured.evaluation.baseline_arm == levers.BASELINE
