"""Per class, how the synthetic set's fidelity and coverage relate to what it adds to the classifier (issue 25).

Reads the base runs of ``bench/levers.py`` (one per data draw): the fidelity study's per-class figures of the
synthetic set (``evaluation/fidelity/<extractor>/fidelity.json``: precision, recall, density, coverage, FD against
the real *test* images, with bootstrap intervals) and each classifier seed's per-class test accuracy of an arm
and of the baseline. Per class it prints the paired gain (mean over seeds of arm − baseline, ± its standard
error) beside the figures, then Spearman's rank correlation of each figure with the gain over all (draw, class)
pairs. Every number names its extractor; the figures describe the whole generated set (the study's input), not
the filtered subset the arm trains on.

    .venv/bin/python bench/fidelity_gain.py                       # runs/levers-d{0,1}-base, arm best
    .venv/bin/python bench/fidelity_gain.py --runs runs/levers-d0-base --arm omega --extractor classifier
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from synthaug.utils import read_json

ROOT = Path(__file__).parents[1]
FIGURES = ["precision", "recall", "density", "coverage", "fid"]


def per_class_accuracy(run: Path, arm: str) -> dict[int, dict[str, float]]:
    """seed -> {class: test accuracy} of ``arm``'s finished seeds."""
    out = {}
    for path in sorted((run / "train" / arm).glob("seed*/metrics.json")):
        per_class = next(iter(read_json(path)["groups"].values()))["per_class"]
        out[int(path.parent.name[4:])] = {c: v for c, v in per_class.items() if v is not None}
    return out


def class_rows(run: Path, arm: str, baseline: str, extractor: str) -> list[dict]:
    """One row per generated class of ``run``: its shot group, fidelity figures and paired gain."""
    fid = read_json(run / "evaluation" / "fidelity" / extractor / "fidelity.json")
    shots = read_json(run / "data" / "stats.json")["groups"][0]["shot_groups"]
    group = {c: g for g, members in shots.items() for c in members}
    arm_acc, base_acc = per_class_accuracy(run, arm), per_class_accuracy(run, baseline)
    seeds = sorted(set(arm_acc) & set(base_acc))
    rows = []
    for name, m in fid["per_class"].items():
        gains = [100 * (arm_acc[s][name] - base_acc[s][name]) for s in seeds if name in arm_acc[s]]
        if not gains:
            continue
        se = float(np.std(gains, ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("nan")
        rows.append({"run": run.name, "class": name, "shot": group.get(name, "?"), "n_synthetic": m["n_synthetic"],
                     **{f: m.get(f) for f in FIGURES}, "gain": float(np.mean(gains)), "se": se,
                     "seeds": len(gains), "extractor": fid["extractor"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=[str(ROOT / "runs" / f"levers-d{d}-base") for d in (0, 1)])
    parser.add_argument("--arm", default="best")
    parser.add_argument("--baseline", default="oversample-digits")
    parser.add_argument("--extractor", default="classifier", help="the fidelity study's extractor folder")
    args = parser.parse_args(argv)
    rows = [r for run in args.runs for r in class_rows(Path(run), args.arm, args.baseline, args.extractor)]
    if not rows:
        print("no finished runs with a fidelity study and both arms", file=sys.stderr)
        return 1
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
    print(f"extractor: {rows[0]['extractor']}; gain = {args.arm} − {args.baseline}, test accuracy points, "
          f"mean ± SE over seeds\n")
    print("| run | class | shot | synthetic | " + " | ".join(FIGURES) + " | gain | seeds |")
    print("|---|---|---|---|" + "---|" * len(FIGURES) + "---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['class']} | {r['shot']} | {r['n_synthetic']} | "
              + " | ".join(fmt(r[f]) for f in FIGURES) + f" | {r['gain']:+.2f} ± {r['se']:.2f} | {r['seeds']} |")
    print(f"\nSpearman's rho of each figure with the gain over {len(rows)} (run, class) pairs:")
    gains = [r["gain"] for r in rows]
    for f in FIGURES:
        pairs = [(r[f], g) for r, g in zip(rows, gains) if r[f] is not None]
        if len(pairs) >= 3:
            rho, p = spearmanr(*zip(*pairs))
            print(f"  {f:10s} rho {rho:+.2f} (p {p:.2g}, n {len(pairs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
