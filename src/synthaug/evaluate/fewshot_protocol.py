"""Seed 002's few-shot protocol end to end (its §4.2 and Appendix D, after DA-Fusion, Trabucco et al. 2023).

For every k in ``shots`` and draw d in ``0..draws-1``, one whole experiment of the config runs with
``data.fewshot: {shots: k, draw: d}``: the training split keeps k images per class (a seeded draw), so the
generator, the synthetic set and every classifier arm see only those k images. Each is an ordinary run folder,
``output_dir/<name>/fewshot/k<k>-d<d>/``, so a finished one is reused through its stage records and an
interrupted one resumes. The arms' results are then gathered into ``fewshot/protocol.{json,csv,md}``: per arm and
k, mean ± sample std over the draws of the test accuracy, and of the best validation accuracy across epochs (the
number seed 002 and DA-Fusion report).

Seed 002's classifier is a pretrained ResNet-50 (ResNeXt-50 in its Table 4) with only its last layer fine-tuned
(cross-entropy, Adam, lr 1e-4, batch 32, 50 epochs) on 50/50 real/synthetic batches: in a config,
``train.model: {name: resnet50, weights: <file>, freeze: all-but-head}`` and an arm with ``mixing:
balanced-batch``. The arms are the config's; the report says where an arm's classifier differs from seed 002's.

This is the end-to-end variant. The quick variant, a linear probe on frozen features over the run's one synthetic
set, is the ``few_shot`` study of ``synthaug run`` (``evaluation.few_shot``, in ``evaluation/few_shot/``); it is
switched off inside the sweep's runs, where the training split already has k images per class.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from synthaug.config import ArmConfig, ExperimentConfig, build_config, load_config
from synthaug.errors import SettingError
from synthaug.report.arms import fmt_pct
from synthaug.report.results import seed_results
from synthaug.utils import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)  # seed 002's 1, 2, 4, 8 and 16 examples per class
DEFAULT_DRAWS = 3
FOLDER = "fewshot"  # the sweep's folder inside the config's run folder
VARIANT = "end-to-end protocol (seed 002)"
QUICK_VARIANT = "linear probe"  # the few_shot study of `synthaug run`
METRICS = {"test_accuracy": "test accuracy of the final classifier",
           "best_val_accuracy": "best validation accuracy across epochs (the number seed 002 and DA-Fusion report)"}


def run_name(shots: int, draw: int) -> str:
    """The folder (and experiment name) of one run of the sweep: ``k<shots>-d<draw>``."""
    return f"k{shots}-d{draw}"


def sweep_configs(cfg: ExperimentConfig, shots: Sequence[int], draws: int) -> list[tuple[int, int, ExperimentConfig]]:
    """``(k, draw, config)`` of every run of the sweep, in run order (k, then draw), each validated.

    Each is ``cfg`` with ``data.fewshot: {shots: k, draw: d}``, its run folder
    ``<cfg's run folder>/fewshot/k<k>-d<d>`` and the quick ``few_shot`` study off.

    Raises:
        SettingError: ``cfg`` sets ``data.fewshot`` itself, ``shots`` is empty, repeats a value or holds one
            below 1, or ``draws`` is below 1.
    """
    if cfg.data.fewshot is not None:
        raise SettingError(f"data.fewshot is set in the config ({cfg.data.fewshot.model_dump()}), but the few-shot "
                           "protocol sets it for each run of its sweep; remove data.fewshot (choose the shots with "
                           "--shots and the number of draws with --draws).")
    shots = list(shots)
    if not shots or any(k < 1 for k in shots) or len(set(shots)) != len(shots):
        raise SettingError(f"shots must be distinct whole numbers of at least 1, got {shots}; e.g. --shots "
                           f"{','.join(map(str, DEFAULT_SHOTS))}.")
    if draws < 1:
        raise SettingError(f"draws must be at least 1, got {draws}; e.g. --draws {DEFAULT_DRAWS}.")
    base = cfg.model_dump(mode="json", exclude_unset=True)  # loads back to cfg (see synthaug.config.dump_config)
    out = []
    for k in shots:
        for d in range(draws):
            raw = {**base, "name": run_name(k, d), "output_dir": str(cfg.run_dir / FOLDER)}
            raw["data"] = {**base.get("data", {}), "fewshot": {"shots": k, "draw": d}}
            evaluation = dict(base.get("evaluation", {}))
            evaluation["few_shot"] = {**evaluation.get("few_shot", {}), "enabled": False}
            raw["evaluation"] = evaluation
            out.append((k, d, build_config(raw, source=f"{cfg.name} (few-shot run {run_name(k, d)})")))
    return out


def _run_one(cfg: ExperimentConfig) -> dict | None:
    """Runs (or reuses, or resumes) one whole experiment, holding its run folder's lock; its report summary, or
    None on a process other than the main one under ``accelerate launch``. The one place the sweep calls the
    runner."""
    import synthaug

    return synthaug.run(cfg)


def run_protocol(config: ExperimentConfig | str | os.PathLike, *, shots: Sequence[int] = DEFAULT_SHOTS,
                 draws: int = DEFAULT_DRAWS, overrides: Sequence[str] = (), wait: bool = False) -> dict | None:
    """Runs the sweep of seed 002's few-shot protocol for the experiment config at ``config`` (see the module
    docstring) and writes ``<run folder>/fewshot/protocol.{json,csv,md}``, rewritten after every run, so an
    interrupted sweep leaves the draws finished so far.

    Args:
        config: the experiment config, or the path of its YAML file.
        shots: training images per class, one sweep point each.
        draws: draws of the k images per k (``data.fewshot.draw`` 0 … draws−1).
        overrides: ``--set`` overrides of the config (``KEY=VALUE``).
        wait: when another process writes the run folder, wait for it instead of refusing.

    Returns:
        The content of ``protocol.json``; None on a process other than the main one under ``accelerate launch``.

    Raises:
        ConfigError, SettingError: a bad config or sweep setting, before anything runs.
        RunFolderBusy: another process writes the run folder (and ``wait`` is False).
    """
    from synthaug.runlock import RunLock, check_folder_path

    if isinstance(config, ExperimentConfig):
        cfg = build_config(config.model_dump(mode="json", exclude_unset=True), list(overrides), source=config.name)
    else:
        cfg = load_config(config, list(overrides))
    folder = cfg.run_dir / FOLDER
    check_folder_path(folder)
    runs = sweep_configs(cfg, shots, draws)  # every run's config validated before the first one starts
    main = os.environ.get("RANK", "0") == "0"  # rank 0 of an `accelerate launch`, or a plain process
    # the sweep writes into the experiment's run folder: its lock (one writer at a time); each run of the sweep also
    # locks its own folder (fewshot/k<k>-d<d>/)
    lock = RunLock(cfg.run_dir, wait=wait)
    protocol = None
    try:
        if main:
            lock.acquire()
        for i, (k, d, sub) in enumerate(runs, 1):
            finished = _finished(sub.run_dir, cfg)
            start = time.time()
            _run_one(sub)
            log.info("few-shot protocol %d/%d: k=%d draw %d %s in %.1f s (%s)", i, len(runs), k, d,
                     "reused" if finished else "done", time.time() - start, sub.run_dir)
            if main:
                protocol = write_protocol(folder, cfg, shots, draws)
    finally:
        lock.release()
    return protocol


def _finished(run_dir: Path, cfg: ExperimentConfig) -> bool:
    """Whether every arm and seed of ``cfg`` has its stage record (or was left out) in ``run_dir``."""
    train = run_dir / "train"
    return all((train / a.name / "left_out.json").is_file()
               or all((train / a.name / f"seed{s}" / "done.json").is_file() for s in cfg.seeds) for a in cfg.arms)


# ------------------------------------------------------------------------------------------ results
def _best_val_accuracy(seed_folder: Path) -> float | None:
    """The highest validation accuracy of ``curves.csv`` across epochs, or None without a validation split."""
    path = seed_folder / "curves.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        values = [float(r["val_acc"]) for r in csv.DictReader(f) if r.get("val_acc")]
    return max(values) if values else None


def _mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (0 for one value) of the values that are not None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}


def draw_results(run_dir: Path, arm: str, seeds: Sequence[int]) -> dict[str, Any] | None:
    """One draw of one arm: its metrics averaged over the classifier seeds that finished, or None when none did."""
    per_seed = seed_results(run_dir, arm, seeds)
    if not per_seed:
        return None
    best_val = [_best_val_accuracy(run_dir / "train" / arm / f"seed{s}") for s in seeds
                if (run_dir / "train" / arm / f"seed{s}" / "metrics.json").is_file()]
    return {"seeds": len(per_seed), "test_accuracy": float(np.mean([m["accuracy"] for m in per_seed])),
            "best_val_accuracy": _mean_std(best_val)["mean"]}


def _classifier(cfg: ExperimentConfig, arm: ArmConfig) -> dict[str, Any]:
    """The arm's classifier, and how it differs from seed 002's (pretrained backbone, last layer only, 50/50)."""
    t = cfg.arm_train(arm)
    weights = t.model.weights or ("timm cache" if t.model.pretrained else None)
    differs = []
    if weights is None:
        differs.append("random initialisation (seed 002: a pretrained backbone)")
    if t.model.freeze != "all-but-head":
        differs.append(f"freeze {t.model.freeze} (seed 002: the last layer only, freeze all-but-head)")
    if arm.synthetic != "none" and (t.mixing != "balanced-batch" or t.synthetic_share != 0.5):
        differs.append(f"mixing {t.mixing} (seed 002: balanced-batch, synthetic_share 0.5)")
    return {"arm": arm.name, "synthetic": arm.synthetic, "model": t.model.name, "weights": weights,
            "freeze": t.model.freeze, "mixing": t.mixing, "loss": t.loss, "epochs": t.epochs,
            "differs_from_seed_002": differs}


def collect_protocol(folder: Path, cfg: ExperimentConfig, shots: Sequence[int], draws: int) -> dict[str, Any]:
    """The protocol's results from the run folders under ``folder`` (the draws finished so far)."""
    runs, rows = [], []
    for k in shots:
        for d in range(draws):
            run_dir = folder / run_name(k, d)
            stats = run_dir / "data" / "stats.json"
            counts = read_json(stats)["groups"][0]["counts"] if stats.is_file() else None
            runs.append({"shots": k, "draw": d, "folder": run_name(k, d), "finished": _finished(run_dir, cfg),
                         "train_per_class": counts})
    for arm in cfg.arms:
        for k in shots:
            per_draw = [{"draw": d, **r} for d in range(draws)
                        if (r := draw_results(folder / run_name(k, d), arm.name, cfg.seeds)) is not None]
            if per_draw:
                rows.append({"arm": arm.name, "shots": k, "draws": len(per_draw),
                             **{m: _mean_std(r[m] for r in per_draw) for m in METRICS}, "per_draw": per_draw})
    return {"variant": VARIANT, "experiment": cfg.name, "folder": str(folder), "shots": list(shots), "draws": draws,
            "classifier_seeds": list(cfg.seeds), "complete": all(r["finished"] for r in runs), "metrics": METRICS,
            "classifiers": [_classifier(cfg, a) for a in cfg.arms], "runs": runs, "rows": rows,
            "notes": _notes(cfg, draws)}


def _notes(cfg: ExperimentConfig, draws: int) -> list[str]:
    return [
        f"Variant: {VARIANT}. Each k and draw is a whole experiment trained on k real images per class (data.fewshot;"
        " draw d is a seeded choice of the k images), its generator fitted on those images only. The quick variant "
        f"({QUICK_VARIANT} on frozen features, the few_shot study of `synthaug run`) made none of these numbers.",
        f"Mean ± sample std over {draws} draw(s) per cell (fewer where a draw has not finished: see `draws`); each "
        f"draw's value is the mean over classifier seeds {list(cfg.seeds)}.",
        "Overall accuracy only: at k shots every class has k training images, so the many/medium/few-shot groups "
        "(split by training count) put every class in one group and say nothing.",
    ]


def markdown(protocol: dict[str, Any]) -> str:
    """``protocol.md``: one table per metric, arms × k, in %."""
    shots = protocol["shots"]
    by = {(r["arm"], r["shots"]): r for r in protocol["rows"]}
    lines = [f"# Few-shot protocol: {protocol['experiment']}", "",
             f"**{protocol['variant']}**, {protocol['draws']} draw(s) per k"
             + ("" if protocol["complete"] else " (incomplete: some runs have not finished)") + ".", ""]
    for metric, label in protocol["metrics"].items():
        lines += [f"## {label[0].upper()}{label[1:]} (%, mean ± std over draws)", "",
                  "| arm | " + " | ".join(f"k={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
        for c in protocol["classifiers"]:
            cells = []
            for k in shots:
                r = by.get((c["arm"], k))
                cells.append("–" if r is None else f"{fmt_pct(r[metric]['mean'], r[metric]['std'], r['draws'])} "
                                                   f"(n={r['draws']})")
            lines.append(f"| {c['arm']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Classifiers", ""]
    for c in protocol["classifiers"]:
        start = c["weights"] or "random initialisation"
        line = (f"- {c['arm']}: {c['model']} from {start}, freeze {c['freeze']}, mixing {c['mixing']}, loss "
                f"{c['loss']}, {c['epochs']} epoch(s), synthetic {c['synthetic']}")
        if c["differs_from_seed_002"]:
            line += "; differs from seed 002: " + "; ".join(c["differs_from_seed_002"])
        lines.append(line + ".")
    lines += ["", *[f"- {n}" for n in protocol["notes"]]]
    return "\n".join(lines) + "\n"


def write_protocol(folder: Path, cfg: ExperimentConfig, shots: Sequence[int], draws: int) -> dict[str, Any]:
    """Writes ``protocol.json``, ``protocol.csv`` (one row per arm and k) and ``protocol.md`` into ``folder``;
    returns the protocol."""
    protocol = collect_protocol(folder, cfg, shots, draws)
    write_json(folder / "protocol.json", protocol)
    with open(folder / "protocol.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "arm", "shots", "draws", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
        for r in protocol["rows"]:
            values = [r[m][s] for m in METRICS for s in ("mean", "std")]
            writer.writerow([VARIANT, r["arm"], r["shots"], r["draws"],
                             *("" if v is None else f"{v:.4f}" for v in values)])
    (folder / "protocol.md").write_text(markdown(protocol))
    return protocol


# ------------------------------------------------------------------------------------------ command line
def _shot_list(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 1,2,4,8,16; got "
                                         f"{text!r}") from None
    return shots


def add_parser(subparsers) -> None:
    """Registers ``synthaug fewshot CONFIG [--shots 1,2,4,8,16] [--draws 3] [--set KEY=VALUE] [--wait]``."""
    p = subparsers.add_parser(
        "fewshot", help="seed 002's few-shot protocol end to end: one whole experiment per k shots and draw, "
                        "mean ± std over draws",
        description="For every k in --shots and each of --draws draws, runs the config's whole experiment on k "
                    "training images per class (data.fewshot) into <run folder>/fewshot/k<k>-d<d>/, then writes "
                    "fewshot/protocol.{json,csv,md}. Finished runs are reused, an interrupted sweep resumes.")
    p.add_argument("config", help="experiment YAML (without data.fewshot: the sweep sets it)")
    p.add_argument("--shots", type=_shot_list, default=list(DEFAULT_SHOTS), metavar="K,K,...",
                   help="training images per class, one sweep point each (default "
                        f"{','.join(map(str, DEFAULT_SHOTS))})")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"draws of the k images per k, data.fewshot.draw 0..N-1 (default {DEFAULT_DRAWS})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; values parsed as YAML)")
    p.add_argument("--wait", action="store_true",
                   help="when another synthaug process is writing the run folder, wait for it (default: refuse)")
    p.set_defaults(func=cmd_fewshot)


def cmd_fewshot(args: argparse.Namespace) -> None:
    protocol = run_protocol(args.config, shots=args.shots, draws=args.draws, overrides=args.overrides, wait=args.wait)
    if protocol is None:  # a process other than the main one under `accelerate launch`
        return
    print(markdown(protocol))
    print(f"Few-shot protocol: {Path(protocol['folder']) / 'protocol.md'} (runs in {protocol['folder']})")
