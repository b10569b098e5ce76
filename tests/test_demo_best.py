"""configs/demo_best.yaml is the setup whose numbers it quotes: the `translate` run of bench/levers.py, arm
translate-soft, and the `relabel-train` run's arm relabel-only, its control (BENCHMARKS.md, issue 25). If either side changes, the quoted measurement no longer applies."""

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
    # each arm as measured: the translated one in the `translate` run, the stand-ins' control in `relabel-train`
    control = load_config(ROOT / "configs" / "demo.yaml", levers.overrides("relabel-train", 0, "", [], False))
    arms = {a.name: (cfg, a) for cfg in (control, measured) for a in cfg.arms}
    assert [a.name for a in best.arms] == ["oversample-digits", "translate-soft", "relabel-only"]
    for arm in best.arms:
        cfg, twin = arms[arm.name]
        assert arm.model_dump() == twin.model_dump(), arm.name
        assert best.arm_train(arm) == cfg.arm_train(twin), arm.name
    assert best.arm_train(best.arms[1]).translation_labels.mode == "soft"
    assert best.arm_train(best.arms[2]).relabel.weight == 0.24 and best.arms[2].synthetic == "none"
    assert best.evaluation.baseline_arm == measured.evaluation.baseline_arm == levers.BASELINE
