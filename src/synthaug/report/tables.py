"""Result tables: one row per arm, mean ± std over seeds, as Markdown and CSV.

Everything here renders from the files of a run folder (``config.yaml``, ``data/``, ``train/<arm>/seed<k>/``,
``judge/``), never from live objects, so a report can be rebuilt from a finished run alone.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.report.results import run_config, seed_results, shot_means
from synthaug.utils import read_json, write_json

COLUMNS = ["overall", "many", "medium", "few"]


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _fmt(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def collect_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Per arm: the metric columns over the seeds that have finished."""
    cfg = run_config(run_dir)
    shot_groups = read_json(Path(run_dir) / "data" / "stats.json")["groups"][0]["shot_groups"]
    rows = []
    for arm in cfg.arms:
        tcfg = cfg.arm_train(arm)
        per_seed = seed_results(run_dir, arm.name, cfg.seeds)
        if not per_seed:
            continue
        row = {"arm": arm.name, "loss": tcfg.loss, "mixing": tcfg.mixing, "synthetic": arm.synthetic,
               "seeds": len(per_seed)}
        rows.append(_metric_columns(row, per_seed, shot_groups))
    return rows + tuned_rows(run_dir, shot_groups)


def _metric_columns(row: dict[str, Any], per_seed: list[dict], shot_groups: dict[str, list[str]]) -> dict[str, Any]:
    for col in COLUMNS:
        if col == "overall":
            values = [m["accuracy"] for m in per_seed]
        else:  # shot groups of the first label group (mean per-class accuracy)
            values = [shot_means(m, shot_groups)[col] for m in per_seed]
        row[col], row[f"{col}_std"] = _mean_std(values)
    return row


def tuned_rows(run_dir: Path, shot_groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Rows of the arms that ``synthaug tune`` retrained with its best parameters (``train/<arm>/tuned.json``)."""
    rows = []
    for record in sorted(Path(run_dir).glob("train/*/tuned.json")):
        tuned = read_json(record)
        per_seed = seed_results(run_dir, tuned["arm"], tuned["seeds"])
        if per_seed:
            row = {"arm": tuned["arm"], "loss": tuned["loss"], "mixing": tuned["mixing"],
                   "synthetic": tuned["synthetic"], "seeds": len(per_seed)}
            rows.append(_metric_columns(row, per_seed, shot_groups))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| arm | loss | mixing | synthetic | " + " | ".join(f"{c} (%)" for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(COLUMNS))]
    for r in rows:
        cells = [_fmt(r[c], r[f"{c}_std"], r["seeds"]) for c in COLUMNS]
        lines.append(f"| {r['arm']} | {r['loss']} | {r['mixing']} | {r['synthetic']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SHORT_CLASSES_SHOWN = 10
LOUD_BELOW = 0.9  # a set that falls short by more than a tenth of its plan is a warning, less a note


def filter_summary(run_dir: Path) -> dict[str, Any] | None:
    """``filter/summary.json`` of the run (per class: planned, rejected by each filter, kept, selected, target,
    short), or None when the run has no filters."""
    path = Path(run_dir) / "filter" / "summary.json"
    return read_json(path) if path.is_file() else None


def filter_columns(summary: dict[str, Any]) -> list[str]:
    """The per-class columns of a filter summary, in table order."""
    return ["planned", *[f"rejected_{n}" for n in summary["filters"]], "kept", "selected", "target", "short"]


def furthest_short(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary rows of the classes short of their target, the smallest share of it selected first."""
    return sorted((r for r in rows if r["short"] > 0), key=lambda r: (r["selected"] / r["target"], r["class"]))


def filter_shortfall(run_dir: Path) -> tuple[str, str] | None:
    """``("Warning", text)`` when the filters left the synthetic set short of its plan (``"Note"`` within a tenth
    of it), or None when every class got its target count. The text says how many of the planned images arms with
    ``use_filters`` train on, the classes furthest short, the filter that rejected most and what to change: a row
    of the arms table that trained on a small share of its plan reads like a verdict on the generator."""
    summary = filter_summary(run_dir)
    if summary is None:
        return None
    rows = [r for r in summary["classes"] if r["target"]]
    target, selected = sum(r["target"] for r in rows), sum(r["selected"] for r in rows)
    if selected >= target:
        return None
    short = furthest_short(rows)
    listed = ", ".join(f"{r['class']} ({r['selected']} of {r['target']})" for r in short[:SHORT_CLASSES_SHOWN])
    more = f" and {len(short) - SHORT_CLASSES_SHOWN} more" if len(short) > SHORT_CLASSES_SHOWN else ""
    planned = sum(r["planned"] for r in summary["classes"])
    rejected = {n: sum(r[f"rejected_{n}"] for r in summary["classes"]) for n in summary["filters"]}
    worst = max(rejected, key=rejected.get)
    overgenerate = run_config(run_dir).plan.overgenerate
    level = "Warning" if selected < LOUD_BELOW * target else "Note"
    text = (f"The filters selected {selected:,} of the {target:,} synthetic images the plan asked for "
            f"({100 * selected / target:.0f} %); classes short: {listed}{more}. Arms with use_filters train on the "
            f"selected images only. The {worst} filter rejected {rejected[worst]:,} of the {planned:,} generated "
            f"images: raise plan.overgenerate (now {overgenerate:g}), or loosen that filter where its reasons in "
            "filter/decisions.jsonl are wrong.")
    return level, text


def filter_table(run_dir: Path) -> list[str]:
    """Markdown lines: kept / rejected per class per filter (``filter/summary.json``) and the shortfall warning,
    or none without filters."""
    summary = filter_summary(run_dir)
    if summary is None:
        return []
    cols = filter_columns(summary)
    warning = filter_shortfall(run_dir)
    lines = ["", "Filters (images per class; arms with use_filters train on the selected ones):", "",
             "| class | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {r['class']} | " + " | ".join(str(r[c]) for c in cols) + " |" for r in summary["classes"] if r["planned"]]
    return lines + (["", f"**{warning[0]}:** {warning[1]}"] if warning else [])


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Writes ``report/results.md``, ``results.csv``, ``summary.json`` and plots from the files of a run
    folder; returns the summary."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(run_dir)
    stats = read_json(run_dir / "data" / "stats.json")["groups"][0]
    sizes = read_json(run_dir / "data" / "done.json")
    judge_record = run_dir / "judge" / "done.json"
    judge = read_json(judge_record) if judge_record.is_file() else None
    shots = stats["shot_groups"]
    md = [f"# {cfg.name}", "",
          f"Training images per class: {stats['counts']} (imbalance ratio {stats['imbalance_ratio']:.0f}); "
          f"many-shot {shots['many']}, medium {shots['medium']}, few {shots['few']}. "
          f"Test: {sizes['test']} images. Seeds: {cfg.seeds} (mean ± sample std).", "",
          markdown_table(rows)]
    pseudo_record = run_dir / "pseudo" / "done.json"
    if pseudo_record.is_file() and read_json(pseudo_record).get("control"):
        md += ["", f"Control arms (synthetic: pseudo): {read_json(pseudo_record)['control']}."]
    for left_out in sorted((run_dir / "train").glob("*/left_out.json")):
        note = read_json(left_out)
        md += ["", f"Arm {note['arm']} left out: {note['reason']}."]
    if judge and judge.get("synthetic_label_accuracy"):
        per_class = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in judge["synthetic_label_accuracy"].items())
        md += ["", f"Synthetic images recognised as their intended class by a classifier trained on the balanced "
                   f"real pool (test accuracy {100 * judge['judge_test_accuracy']:.1f}%): {per_class}."]
    md += filter_table(run_dir)
    text = "\n".join(md) + "\n"
    (folder / "results.md").write_text(text)
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["arm"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"rows": rows, "judge": judge, "markdown": text}
    write_json(folder / "summary.json", summary)
    if rows:
        from synthaug.report.plots import per_class_accuracy_plot

        per_class_accuracy_plot(run_dir, folder / "per_class_accuracy.png")
    return summary
