"""The tail levers of issue 25, each alone on the current best synthetic arm, with the protocol of the 19 % / 25 %
figures (BENCHMARKS "Downstream benchmark"): MNIST-LT ρ = 100, two data draws (``seed`` 0 and 1), 6 classifier
seeds per arm, paired gains against the strongest non-generative baseline, the oracle's 3 seeds for the gap.

    .venv/bin/python bench/levers.py [--draws 0,1] [--levers base,omega,feedback,translate,indist,tuned] [--quick]
    .venv/bin/python bench/levers.py --table           # print the table of what has finished

Per draw, one run folder per lever that changes the synthetic set or the filters (the others are arms of the
base run); each copies the base run's data, generator and scoring classifier first, so the generator is trained
once per draw and every row is paired on the same classifier seeds:

- ``base``: the demo's budget (DDPM 300 steps, DPM-Solver++ 8 trailing steps, small CNN 10 epochs; no CBDM,
  which costs 1.8× the generator's training: add ``--set generator.params.cbdm_tau=0.25``), the plan
  over-generated 1.5×, filters confidence (p >= 0.5, ``oversample-digits``) + near-duplicate;
  arms ``oversample-digits`` (the baseline) and ``best`` (oversample-synthetic on the filtered set), and
  ``omega`` (``best`` with ``train.synthetic_weight`` 0.5: DiffuLT's ω);
- ``indist``: the same set, + the in-distribution filter (quantile 0.99 of the class's real distances; 0.9
  rejected 47 % of the set on its own);
- ``feedback``: the set sampled with classifier feedback (loss criterion of ``oversample-digits``, scale 0.1,
  every 2nd step);
- ``feedback-nd``: the ``feedback`` run's guided set with the near-duplicate filter alone (the confidence filter
  scores with the classifier whose loss feedback raised);
- ``translate``: the set translated from other classes' real images (SDEdit strength 0.7), ``best`` with hard
  labels and ``soft`` with Diff-Mix's soft labels (γ 0.5);
- ``tuned``: ``synthaug tune`` in the base run's folder: the share of synthetic images per shot group (0, 0.25,
  0.5 or 1 for many / medium / few) searched on the validation split, never test, for ``best`` (16 trials of
  5 epochs: half the arm's, a cheaper proxy for the ranking), then the best trial retrained on every seed at the
  arm's 10 epochs as the arm ``tuned-best``;
- ``translate-nf``: ``translate-soft`` with the near-duplicate filter alone (Diff-Mix keeps every translation),
  and ``translate-soft-nf-g2`` / ``-g4`` with γ 2 / 4;
- ``small``: ``best`` on a share of 0.075 of its set, as many images as the translated rows trained on;
- ``translate-s0.5``, ``translate-s0.8``, ``translate-s0.9``: ``translate-soft`` at strength 0.5 (4 of the 8
  sampling steps), 0.8 (6 of 8) and 0.9 (7 of 8);
- ``relabel``: a control for ``translate-soft-nf-g4``'s label: the source images all but untranslated (strength
  0.125, one step), unfiltered, with the same 0.24 on the target class (γ 0.686);
- ``relabel-train``: the same label as a train option (``train.relabel``, no generator): ``relabel-only`` and
  ``best-relabel`` (the stand-ins on top of ``best``'s filtered set);
- ``combo`` (``--levers combo --set ...``): any combination, given as overrides (``--set-from translate`` starts
  from that lever's synthetic set; an ``arms=[...]`` override names the arm ``combo``).

Extra ``--set`` overrides apply to every run asked for (to the base run only when ``base`` is among ``--levers``). The compute-scaling curve trains the generator longer under another
run name and keeps only ``best`` (the data, baseline and oracle are copied from the plain base run):
``--levers base --suffix=-s1000 --arms best --set generator.params.train_steps=1000``. Gap closed = (arm − baseline) / (oracle − baseline), pooled over the draws
(means over draws of each term); the paired gain is the mean seed-by-seed difference ± its standard error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import synthaug
from synthaug.config import load_config
from synthaug.report.results import shot_means
from synthaug.utils import read_json

ROOT = Path(__file__).parents[1]
COLUMNS = ["overall", "many", "medium", "few"]
SEEDS = [0, 1, 2, 3, 4, 5]
BASELINE = "oversample-digits"
FILTERS = ("{name: confidence, classifier_arm: oversample-digits, min_probability: 0.5}, {name: near-duplicate}")


def arm(name: str, *, synthetic: bool = True, **train) -> dict:
    cfg = {"name": name, "train": {"loss": "ce", "mixing": "oversample-synthetic" if synthetic else "oversample",
                                   "augment": "digits", **train}}
    if synthetic:
        cfg.update(synthetic="generated", use_filters=True)
    return cfg


LEVERS: dict[str, dict] = {
    "base": {"arms": [arm(BASELINE, synthetic=False), arm("best"), arm("omega", synthetic_weight=0.5)],
             "set": [], "oracle": True},
    "indist": {"arms": [arm(BASELINE, synthetic=False), arm("indist")],
               "set": [f"filters=[{FILTERS}, {{name: in-distribution, classifier_arm: {BASELINE}, quantile: 0.99}}]"]},
    "feedback": {"arms": [arm(BASELINE, synthetic=False), arm("feedback")],
                 "set": [f"generator.params.feedback={{classifier: {BASELINE}, criterion: loss, scale: 0.1, every: 2}}"]},
    # the guided set without the confidence filter, which scores with the classifier whose loss feedback raised
    # (it rejected 88-90 % of the guided set); the set itself is the `feedback` run's, copied
    "feedback-nd": {"arms": [arm(BASELINE, synthetic=False), arm("feedback-nd")],
                    "set": [f"generator.params.feedback={{classifier: {BASELINE}, criterion: loss, scale: 0.1, every: 2}}",
                            "filters=[{name: near-duplicate}]"], "set_from": "feedback"},
    "translate": {"arms": [arm(BASELINE, synthetic=False), arm("translate-hard"),
                           arm("translate-soft", translation_labels={"mode": "soft", "gamma": 0.5})],
                  "set": ["generator.params.translate_from=other-classes", "generator.params.strength=0.7"]},
    # Diff-Mix keeps every translation and lets the soft label carry the ambiguity; the confidence filter keeps a
    # translation only when the classifier already reads it as its target (it rejected 95 % of the translated set):
    # translate-soft on the same set with the near-duplicate filter alone
    # (γ 2 and 4: the target weight 0.7² = 0.49 and 0.7⁴ = 0.24, nearer what most of the kept images show)
    "translate-nf": {"arms": [arm(BASELINE, synthetic=False),
                              arm("translate-soft-nf", translation_labels={"mode": "soft", "gamma": 0.5}),
                              arm("translate-soft-nf-g2", translation_labels={"mode": "soft", "gamma": 2.0}),
                              arm("translate-soft-nf-g4", translation_labels={"mode": "soft", "gamma": 4.0})],
                     "set": ["generator.params.translate_from=other-classes", "generator.params.strength=0.7",
                             "filters=[{name: near-duplicate}]"], "set_from": "translate"},
    # a size control for the translated rows: `best` on as few synthetic images as the confidence filter left of the
    # translations (210 / 225 of ~2,830: a share of 0.075 of every class's filtered set)
    "small": {"arms": [arm(BASELINE, synthetic=False),
                       arm("best-small", synthetic_ratio={"many": 0.075, "medium": 0.075, "few": 0.075})], "set": []},
    # the translation strength (0.7 above): 0.5 runs 4 of the 8 sampling steps and keeps more of the source image,
    # 0.9 runs 7 and keeps less (Diff-Mix draws its strength from {0.5, 0.7, 0.9}); soft labels as translate-soft
    **{f"translate-{tag}": {"arms": [arm(BASELINE, synthetic=False),
                                     arm(f"translate-soft-{tag}", translation_labels={"mode": "soft", "gamma": 0.5})],
                            "set": ["generator.params.translate_from=other-classes",
                                    f"generator.params.strength={strength}"]}
       for tag, strength in (("s0.5", 0.5), ("s0.8", 0.8), ("s0.9", 0.9))},
    # a control for the soft label itself: the real source images all but unchanged (strength 0.125: 1 of the 8
    # steps, at the least noise), unfiltered, labelled 0.24 on the target class as translate-soft-nf-g4's are
    # (0.125^0.686 = 0.7^4): what the label alone does, without the generator's image
    "relabel": {"arms": [arm(BASELINE, synthetic=False),
                         arm("relabel-ctl", translation_labels={"mode": "soft", "gamma": 0.686})],
                "set": ["generator.params.translate_from=other-classes", "generator.params.strength=0.125",
                        "filters=[]", "plan.overgenerate=1.0"]},
    # the same label as a train option (train.relabel), with no generator at all: real images of other classes
    # as stand-ins for each class, 0.24 on the class they stand in for; alone (the baseline's oversampling, the
    # stand-ins as its synthetic part) and on top of `best`'s filtered set (does the generator add to the label?)
    "relabel-train": {"arms": [arm(BASELINE, synthetic=False),
                               arm("relabel-only", synthetic=False, mixing="oversample-synthetic",
                                   relabel={"weight": 0.24}),
                               arm("best-relabel", relabel={"weight": 0.24})], "set": []},
    "combo": {"arms": [arm(BASELINE, synthetic=False), arm("combo")], "set": []},
    # `synthaug tune` on the base run: the share of synthetic images per shot group searched on the validation
    # split (never test) for the `best` arm, then retrained as the arm tuned-best on every seed
    "tuned": {"arms": [arm(BASELINE, synthetic=False), {"name": "tuned-best"}], "set": [], "run": "base"},
}
TUNE = ("tune={arm: best, synthetic_ratio: {per: group, type: categorical, choices: [0, 0.25, 0.5, 1]}, "
        "n_trials: 16, epochs: 5, objective: best-val-accuracy, pruner: none, startup_trials: 8}")
# what a lever's run reuses from the base run of its draw (copied before it runs; fingerprints decide reuse):
# the data, the generator and the baseline (also the scoring and feedback classifier); the same synthetic set
# and its filter scores where the lever does not resample
SHARED = ["data", "generator"]
# arms that train on no generated image (the run may still hold a generator for its other arms): no generator cost
NO_GENERATOR = {"relabel-only"}
SAME_SET = ["synthetic", "filter-scores"]


def overrides(lever: str, draw: int, suffix: str, extra: list[str], quick: bool, seeds: list[int] = SEEDS,
              only: list[str] | None = None) -> list[str]:
    spec = LEVERS[lever]
    arms = [a for i, a in enumerate(spec["arms"]) if i == 0 or only is None or a["name"] in only]
    out = [f"name=levers{suffix}-d{draw}-{lever}", f"seed={draw}", f"seeds={[0] if quick else seeds}",
           f"arms={arms}", f"filters=[{FILTERS}]", "plan.overgenerate=1.5",
           f"evaluation.baseline_arm={BASELINE}",
           f"evaluation.seeds={[0] if quick else [0, 1, 2]}", "evaluation.cas.enabled=false",
           "evaluation.replacement.enabled=false", "evaluation.few_shot.enabled=false",
           "evaluation.targeted.enabled=false"]
    if not spec.get("oracle"):  # the base run alone has the oracle and the fidelity study (bench/fidelity_gain.py)
        out += ["evaluation.oracle.enabled=false", "evaluation.fidelity.enabled=false"]
    if quick:  # a few-step generator draws noise that thresholds reject outright: keep the top half instead
        out = [o.replace("min_probability: 0.5", "keep_top_percent: 50").replace("quantile: 0.99", "quantile: 1.0")
               for o in out + spec["set"]]
        out += ["generator.params.train_steps=20", "generator.params.block_out_channels=[16, 32]",
                "generator.params.norm_num_groups=4", "generator.params.sampling_steps=4", "plan.target=30",
                "train.epochs=1", "judge.epochs=1"]
        return out + extra
    return out + spec["set"] + extra


def share_from_base(base: Path, run: Path, lever: str) -> None:
    """Copies the base run's reusable stages into ``run`` (once: a run that has them keeps its own)."""
    resamples = any(o.startswith("generator.params.") for o in LEVERS[lever]["set"]) or "set_from" in LEVERS[lever]
    for rel in SHARED + ([] if resamples else SAME_SET):
        if (base / rel).is_dir() and not (run / rel).exists():
            shutil.copytree(base / rel, run / rel, symlinks=True)
    # the baseline seed by seed, so that seeds added later (``--seeds 0,...,5`` after a 3-seed run), trained by the
    # base run just before, are copied rather than retrained in every lever's run
    for seed in sorted((base / "train" / BASELINE).glob("seed*/done.json")):
        if not (run / "train" / BASELINE / seed.parent.name).exists():
            shutil.copytree(seed.parent, run / "train" / BASELINE / seed.parent.name, symlinks=True)
    if "set_from" in LEVERS[lever]:  # the same resampled set as another lever's run (its fingerprint decides)
        sibling = base.with_name(base.name.removesuffix("-base") + "-" + LEVERS[lever]["set_from"]) / "synthetic"
        if sibling.is_dir() and not (run / "synthetic").exists():
            shutil.copytree(sibling, run / "synthetic", symlinks=True)


def per_seed(run: Path, name: str, shot_groups: dict) -> dict[int, dict[str, float]]:
    out = {}
    for seed in SEEDS:
        path = run / "train" / name / f"seed{seed}" / "metrics.json"
        if path.is_file():
            m = read_json(path)
            out[seed] = {"overall": m["accuracy"], **{k: v for k, v in shot_means(m, shot_groups).items()
                                                      if k in COLUMNS}}
    return out


def stage_seconds(run: Path, rels: list[str]) -> float:
    total = 0.0
    for rel in rels:
        for record in (run / rel).glob("**/done.json") if (run / rel).is_dir() else []:
            total += float(read_json(record).get("seconds", 0.0))
    return total


def collect(root: Path, suffix: str, draws: list[int]) -> dict:
    """Per draw: the baseline's and each arm's per-seed metrics, the oracle's mean, and each arm's compute."""
    out = {}
    for draw in draws:
        base = root / f"levers{suffix}-d{draw}-base"
        if not (base / "data" / "stats.json").is_file():
            continue
        shot_groups = read_json(base / "data" / "stats.json")["groups"][0]["shot_groups"]
        oracle = [read_json(p) for p in sorted(base.glob("evaluation/oracle/seed*/metrics.json"))]
        entry = {"baseline": per_seed(base, BASELINE, shot_groups), "arms": {}, "oracle": None}
        if oracle:
            entry["oracle"] = {c: float(np.mean([m["accuracy"] if c == "overall" else shot_means(m, shot_groups)[c]
                                                 for m in oracle])) for c in COLUMNS}
            entry["oracle_seeds"] = len(oracle)
        for lever, spec in LEVERS.items():
            run = root / f"levers{suffix}-d{draw}-{spec.get('run', lever)}"
            for a in spec["arms"][1:]:
                seeds = per_seed(run, a["name"], shot_groups)
                if seeds:
                    train_s = stage_seconds(run, [f"train/{a['name']}"])
                    gen_s = 0.0 if a["name"] in NO_GENERATOR else (
                        stage_seconds(run, ["generator"]) + stage_seconds(run, ["synthetic", "filter", "filter-scores"]))
                    used = [read_json(p).get("synthetic", 0)
                            for p in (run / "train" / a["name"]).glob("seed*/done.json")]
                    entry["arms"][a["name"]] = {"seeds": seeds, "train_s": train_s / len(seeds), "synth_s": gen_s,
                                                "synthetic_used": float(np.mean(used)) if used else 0.0}
        out[draw] = entry
    return out


def table(results: dict) -> str:
    """Rows per arm: mean overall / many / medium / few over draws and seeds, the paired few-shot and overall
    gains (± SE over the seed pairs of both draws), the share of the gap closed, and the compute."""
    names = sorted({a for entry in results.values() for a in entry["arms"]}, key=list(
        a["name"] for spec in LEVERS.values() for a in spec["arms"][1:]).index)
    lines = ["| arm | draws × seeds | overall | many | medium | few | paired gain overall | paired gain few | "
             "gap closed overall / few | synthetic images trained on (per draw) | "
             "generator + sampling + filters s (per draw) | training s per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def mean_of(rows: list[dict[str, float]], col: str) -> float:
        return float(np.mean([r[col] for r in rows]))

    baseline_rows = [m for e in results.values() for m in e["baseline"].values()]
    if baseline_rows:
        lines.append(f"| {BASELINE} (baseline) | {len(results)} × {len(baseline_rows) // max(len(results), 1)} | "
                     + " | ".join(f"{100 * mean_of(baseline_rows, c):.1f}" for c in COLUMNS) + " | | | | | | |")
    for name in names:
        pairs = {c: [] for c in COLUMNS}
        gaps = {c: [] for c in ("overall", "few")}
        arm_rows, cost, used = [], [], []
        for draw, e in results.items():
            a = e["arms"].get(name)
            if a is None:
                continue
            common = sorted(set(a["seeds"]) & set(e["baseline"]))
            for s in common:
                for c in COLUMNS:
                    pairs[c].append(a["seeds"][s][c] - e["baseline"][s][c])
            arm_rows += [a["seeds"][s] for s in common]
            if e["oracle"] and common:
                for c in gaps:
                    base = np.mean([e["baseline"][s][c] for s in common])
                    gaps[c].append((np.mean([a["seeds"][s][c] for s in common]) - base, e["oracle"][c] - base))
            cost.append((a["synth_s"], a["train_s"]))
            used.append(a["synthetic_used"])
        if not arm_rows:
            continue

        def gain(c):
            d = np.asarray(pairs[c])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            return f"{100 * d.mean():+.2f} ± {100 * se:.2f}"

        def closed(c):
            if not gaps[c]:
                return "–"
            num, den = np.mean([g[0] for g in gaps[c]]), np.mean([g[1] for g in gaps[c]])
            return f"{100 * num / den:+.0f} %"

        per_draw = "/".join(str(len(set(e["arms"][name]["seeds"]) & set(e["baseline"])))
                            for e in results.values() if name in e["arms"])
        lines.append(f"| {name} | {per_draw.count('/') + 1} × {per_draw} | "
                     + " | ".join(f"{100 * mean_of(arm_rows, c):.1f}" for c in COLUMNS)
                     + f" | {gain('overall')} | {gain('few')} | {closed('overall')} / {closed('few')} | "
                     + f"{' / '.join(f'{u:,.0f}' for u in used)} | "
                     + f"{np.mean([c[0] for c in cost]):.0f} | {np.mean([c[1] for c in cost]):.0f} |")
    oracles = [e["oracle"] for e in results.values() if e["oracle"]]
    if oracles:
        seeds = "/".join(str(e["oracle_seeds"]) for e in results.values() if e["oracle"])
        lines.append(f"| oracle (balanced real pool) | {len(oracles)} × {seeds} | "
                     + " | ".join(f"{100 * np.mean([o[c] for o in oracles]):.1f}" for c in COLUMNS) + " | | | | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--draws", default="0,1")
    parser.add_argument("--levers", default="base,omega,feedback,translate,indist,tuned",
                        help="which runs (omega is an arm of base)")
    parser.add_argument("--suffix", default="", help="a tag in the run names, e.g. for another generator budget (write --suffix=-s1000: a value starting with - needs the =)")
    parser.add_argument("--quick", action="store_true", help="a tiny budget: a smoke run of the whole path")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="classifier seeds (the protocol's 6 by default; fewer reuse as a prefix of them)")
    parser.add_argument("--table", action="store_true", help="only print the table of finished runs")
    parser.add_argument("--arms", default=None,
                        help="only these arms of each run (comma-separated; the baseline always trains), e.g. "
                             "`best` for the compute-scaling curve")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--set-from", default=None, metavar="LEVER",
                        help="combo only: start from that lever's run's synthetic set (give its generator overrides "
                             "too, e.g. translate's, so the fingerprints match and the set is reused)")
    args = parser.parse_args(argv)
    draws = [int(d) for d in args.draws.split(",")]
    suffix = args.suffix + ("-quick" if args.quick else "")
    levers = [lv for lv in args.levers.split(",") if lv != "omega"]
    if args.set_from:
        LEVERS["combo"]["set_from"] = args.set_from
    root = Path(load_config(args.config).output_dir)
    if not args.table:
        for draw in draws:
            for lever in ["base"] + [lv for lv in levers if lv != "base"]:
                only = None if args.arms is None else args.arms.split(",")
                if lever == "tuned":  # the search and retrain-best, in the base run's folder
                    from synthaug.cli import main as cli

                    start = time.time()
                    tuned = overrides("base", draw, suffix, args.overrides, args.quick,  # the tuned arm stays
                                      [int(s) for s in args.seeds.split(",")], only and [*only, "best"])
                    tuned.append(TUNE.replace("n_trials: 16", "n_trials: 2").replace("epochs: 5", "epochs: 1")
                                 .replace("startup_trials: 8", "startup_trials: 1") if args.quick else TUNE)
                    if cli(["tune", args.config, *[x for o in tuned for x in ("--set", o)]]):
                        return 1
                    print(f"[levers] draw {draw} tuned: {time.time() - start:.0f} s", flush=True)
                    continue
                # the base run takes the extra overrides only when asked for (another generator budget): a
                # lever's overrides must not redo the base run that every lever shares from
                extra = args.overrides if lever != "base" or "base" in levers else []
                cfg = load_config(args.config, overrides(lever, draw, suffix, extra, args.quick,
                                                         [int(s) for s in args.seeds.split(",")], only))
                if lever != "base":
                    share_from_base(root / f"levers{suffix}-d{draw}-base", cfg.run_dir, lever)
                elif args.suffix:  # another generator budget: the data, baseline and oracle of the plain base run
                    for rel in ["data", f"train/{BASELINE}", "evaluation/oracle"]:
                        plain = root / f"levers{'-quick' if args.quick else ''}-d{draw}-base" / rel
                        if plain.is_dir() and not (cfg.run_dir / rel).exists():
                            shutil.copytree(plain, cfg.run_dir / rel, symlinks=True)
                start = time.time()
                synthaug.run(cfg)
                print(f"[levers] draw {draw} {lever}: {time.time() - start:.0f} s", flush=True)
    print(table(collect(root, suffix, draws)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
