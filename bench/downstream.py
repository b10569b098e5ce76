"""Downstream benchmark: the demo experiment (MNIST-LT, ρ = 100) against the strongest honest baselines and an
upper bound, mean ± std over 3 classifier seeds, at the demo's compute budget.

    .venv/bin/python bench/downstream.py [--quick] [--set key=value ...]

Budget: ``configs/demo.yaml`` as it is (its generator, sampler, step count and classifier epochs), with the
synthetic plan over-generated 1.5× for the filters and 3 classifier seeds (the synthetic set is made once;
seeds vary classifier initialisation and batches). ``--set generator.params.train_steps=600`` etc. for more.

Arms: the non-generative baselines (cross-entropy, Balanced Softmax, oversampling), each without and with the
best augmentation preset for the data (``--augment``, ``digits`` = random affine for MNIST); real + synthetic,
all with that augmentation, with cross-entropy (pooled), Balanced Softmax (pooled; prior: auto, the label mix
the batches follow) and oversample-synthetic (every class drawn equally often, at least half of its draws real),
each on the unfiltered set and on the filtered one (confidence filter, p >= 0.5, from the augmented oversampling
arm + near-duplicate); and the oracle: the augmented cross-entropy classifier on the balanced real pool (the
``evaluation.oracle`` study). Prints per arm overall / many / medium / few-shot
top-1 and the share of the gap closed, (arm − best non-generative arm) / (oracle − best non-generative arm),
for overall and few-shot accuracy (the best non-generative arm taken per column), then the synthetic label
check, the filter counts and the memorisation figures. Finished stages are reused on re-run.

``--quick``: a tiny budget (one seed, a few generator steps, one epoch) for a smoke run of the whole path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from synthaug.config import load_config
import synthaug
from synthaug.report.results import shot_means
from synthaug.report.tables import collect_rows
from synthaug.utils import read_json

COLUMNS = ["overall", "many", "medium", "few"]
FULL_BUDGET = ["name=bench-downstream", "seeds=[0, 1, 2]"]  # the demo config's generator and epochs
QUICK_BUDGET = ["name=bench-downstream-quick", "seeds=[0]", "generator.params.train_steps=30",
                "generator.params.block_out_channels=[16, 32]", "generator.params.norm_num_groups=4",
                "generator.params.sampling_steps=4",
                "plan.target=40", "train.epochs=1", "judge.epochs=1", "plan.batch_size=64"]


def arms(augment: str) -> list[dict]:
    """The compared arms (non-generative ones without and with ``augment``; generative ones with it)."""
    real = [("real-ce", "ce", "real-only"), ("real-bsm", "balanced-softmax", "real-only"),
            ("oversample", "ce", "oversample")]
    out = [{"name": n, "train": {"loss": loss, "mixing": mixing, "augment": "none"}} for n, loss, mixing in real]
    out += [{"name": f"{n}-{augment}", "train": {"loss": loss, "mixing": mixing, "augment": augment}}
            for n, loss, mixing in real]
    synthetic = [("synth-ce", "ce", "combined"), ("synth-bsm", "balanced-softmax", "combined"),
                 ("synth-oversample", "ce", "oversample-synthetic")]
    for name, loss, mixing in synthetic:
        for filtered in (False, True):
            out.append({"name": f"{name}{'-filtered' if filtered else ''}-{augment}", "synthetic": "generated",
                        "use_filters": filtered, "train": {"loss": loss, "mixing": mixing, "augment": augment}})
    return out


def bench_overrides(augment: str, seeds_override: str, *, quick: bool = False) -> list[str]:
    # the quick budget's generator draws noise that a threshold rejects outright: keep the top half instead
    rule = "keep_top_percent: 50" if quick else "min_probability: 0.5"
    return [f"arms={arms(augment)}",
            f"filters=[{{name: confidence, classifier_arm: oversample-{augment}, {rule}}}, "
            "{name: near-duplicate}]",
            "plan.overgenerate=1.5",
            f"evaluation.baseline_arm=real-ce-{augment}", f"evaluation.seeds={seeds_override}",
            "evaluation.cas.enabled=false", "evaluation.replacement.enabled=false",
            "evaluation.few_shot.enabled=false", "evaluation.targeted.enabled=false"]


def oracle_row(run_dir: Path, seeds: list[int]) -> dict | None:
    shot_groups = read_json(run_dir / "data" / "stats.json")["groups"][0]["shot_groups"]
    runs = [read_json(p) for s in seeds if (p := run_dir / "evaluation" / "oracle" / f"seed{s}" / "metrics.json").is_file()]
    if not runs:
        return None
    row = {"arm": "oracle (balanced real pool)", "seeds": len(runs)}
    for col in COLUMNS:
        values = [m["accuracy"] if col == "overall" else shot_means(m, shot_groups)[col] for m in runs]
        row[col], row[f"{col}_std"] = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return row


def gap_closed(value: float | None, best: float, oracle: float) -> str:
    if value is None or oracle <= best:
        return "–"
    return f"{100 * (value - best) / (oracle - best):+.0f} %"


def table(rows: list[dict], oracle: dict | None) -> str:
    def cell(r, c):
        return "–" if r.get(c) is None else f"{100 * r[c]:.1f} ± {100 * r[f'{c}_std']:.1f}"

    baselines = [r for r in rows if r["synthetic"] == "none"]
    best = {c: max(baselines, key=lambda r: r[c] if r[c] is not None else -1) for c in ("overall", "few")}
    lines = ["| arm | " + " | ".join(f"{c} (%)" for c in COLUMNS) + " | gap closed, overall | gap closed, few |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows + ([oracle] if oracle else []):
        gaps = [gap_closed(r[c], best[c][c], oracle[c]) if oracle and r is not oracle else "–" for c in ("overall", "few")]
        lines.append(f"| {r['arm']} | " + " | ".join(cell(r, c) for c in COLUMNS) + " | " + " | ".join(gaps) + " |")
    lines.append(f"\nBest non-generative arm: overall {best['overall']['arm']}, few-shot {best['few']['arm']}.")
    return "\n".join(lines)


def current(paths) -> list[Path]:
    """``paths`` without the results a changed input set aside (``<stage>.stale-<hash>`` folders)."""
    return sorted(p for p in paths if not any(".stale-" in part for part in p.parts))


def details(run_dir: Path) -> list[str]:
    """The synthetic label check, the filters' counts and the memorisation figures, where they were made."""
    out = []
    judge = run_dir / "judge" / "done.json"
    if judge.is_file():
        j = read_json(judge)
        out.append("judge (balanced real pool; measures the generator, not used for filtering): "
                   + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in j["synthetic_label_accuracy"].items()))
    summary = run_dir / "filter" / "summary.json"
    if summary.is_file():
        rows = read_json(summary)["classes"]
        out.append("filters per class (planned/kept/selected/target): " + ", ".join(
            f"{r['class']}: {r['planned']}/{r['kept']}/{r['selected']}/{r['target']}" for r in rows if r["planned"]))
    for mem in current(run_dir.glob("evaluation/fidelity/*/memorisation.json")):
        m = read_json(mem)
        out.append(f"memorisation ({m['extractor']}): near-copy share {100 * m['overall']['near_copy_share']:.1f}% of "
                   "the unfiltered set; per class " + ", ".join(
                       f"{k}: {100 * v['near_copy_share']:.0f}%" for k, v in m["per_class"].items()))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "demo.yaml"))
    parser.add_argument("--augment", default="digits", help="the best augmentation preset for the data")
    parser.add_argument("--quick", action="store_true", help="a tiny budget: a smoke run of the whole benchmark")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    seeds = "[0]" if args.quick else "[0, 1, 2]"
    cfg = load_config(args.config, budget + bench_overrides(args.augment, seeds, quick=args.quick) + args.overrides)
    start = time.time()
    synthaug.run(cfg)
    run_dir = cfg.run_dir
    print(table(collect_rows(run_dir), oracle_row(run_dir, cfg.evaluation.seeds or cfg.seeds[:1])))
    print("\n".join(details(run_dir)))
    print("stage seconds:")
    for record in current(run_dir.glob("**/done.json")):
        print(f"  {record.parent.relative_to(run_dir)}: {read_json(record)['seconds']}")
    print(f"total wall-clock this invocation: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
