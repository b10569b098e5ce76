"""The arms table of the report: one row per arm with its hyper-parameters, augmentation, synthetic settings,
test loss and accuracy (overall and many/medium/few), mean ± std over seeds, the oracle (the same classifier on
the balanced real pool) and each arm's share of the gap closed:

    gap closed = (arm − best non-generative arm) / (oracle − best non-generative arm),

overall and on the few-shot classes. Renders from the run folder's files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthaug.report.results import run_config, seed_folders, seed_results, shot_means
from synthaug.utils import read_json

METRICS = ["accuracy", "many", "medium", "few", "test_loss"]
HYPER = ["model", "loss", "mixing", "augment", "batch_mix", "optimizer", "lr", "epochs", "batch_size"]


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _metric_row(per_seed: list[dict], shot_groups: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"seeds": len(per_seed)}
    for name in METRICS:
        if name == "accuracy":
            values = [m["accuracy"] for m in per_seed]
        elif name == "test_loss":
            values = [m.get("loss") for m in per_seed]
        else:
            values = [shot_means(m, shot_groups)[name] for m in per_seed]
        row[name], row[f"{name}_std"] = _stats(values)
    return row


def _seed_metrics(folder: Path) -> list[dict]:
    return [read_json(f / "metrics.json") for f in seed_folders(folder) if (f / "metrics.json").is_file()]


def arm_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of the arms table (arms with at least one finished seed, then the oracle when it ran), each with
    ``gap_closed`` and ``gap_closed_few`` (None without an oracle or a non-generative arm)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    shot_groups = read_json(run_dir / "data" / "stats.json")["groups"][0]["shot_groups"]
    gen = cfg.generator
    synthetic_settings = {"none": "–", "generated": f"{gen.name} " + ", ".join(
        f"{k}={v}" for k, v in gen.params.items() if k in ("guidance_scale", "sampling_steps", "sampler", "train_steps")),
        "pseudo": f"{gen.name} unconditional, pseudo-labelled by {cfg.pseudo.classifier_arm}"}
    rows = []
    for arm in cfg.arms:
        per_seed = seed_results(run_dir, arm.name, cfg.seeds)
        if not per_seed:
            continue
        t = cfg.arm_train(arm)
        done = [read_json(f / "done.json") for f in seed_folders(run_dir / "train" / arm.name)
                if (f / "done.json").is_file()]
        row = {"arm": arm.name, "model": t.model.name, "loss": t.loss, "mixing": t.mixing, "augment": t.augment,
               "batch_mix": t.batch_mix, "optimizer": t.optimizer, "lr": t.lr, "epochs": t.epochs,
               "batch_size": t.batch_size, "synthetic": arm.synthetic,
               "synthetic_images": done[0].get("synthetic", 0) if done else 0,
               "synthetic_settings": synthetic_settings[arm.synthetic], **_metric_row(per_seed, shot_groups)}
        rows.append(row)
    oracle = _seed_metrics(run_dir / "evaluation" / "oracle")
    oracle_row = None
    if oracle:
        base = next((r for r in rows if r["synthetic"] == "none"), rows[0] if rows else None)
        oracle_row = {**({k: base[k] for k in HYPER} if base else {}), "arm": "oracle (balanced real pool)",
                      "synthetic": "none", "synthetic_images": 0,
                      "synthetic_settings": "– (all real training images, before long-tailing)",
                      **_metric_row(oracle, shot_groups)}
    real_only = [r for r in rows if r["synthetic"] == "none"]
    for key, out in (("accuracy", "gap_closed"), ("few", "gap_closed_few")):
        candidates = [r[key] for r in real_only if r[key] is not None]
        best = max(candidates) if candidates else None
        top = oracle_row[key] if oracle_row else None
        for r in rows:
            ok = best is not None and top is not None and r[key] is not None and abs(top - best) > 1e-12
            r[out] = (r[key] - best) / (top - best) if ok else None
        if oracle_row:
            oracle_row[out] = 1.0 if best is not None and top is not None and abs(top - best) > 1e-12 else None
    return rows + ([oracle_row] if oracle_row else [])


def fmt_pct(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def fmt_loss(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def fmt_gap(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


HEADER = ["arm", "model", "loss", "mixing", "augment", "optimizer, lr", "epochs", "batch", "synthetic",
          "test loss", "accuracy (%)", "many (%)", "medium (%)", "few (%)", "gap closed", "gap closed (few)", "seeds"]


def display_cells(r: dict) -> list[str]:
    n = r["seeds"]
    synthetic = r["synthetic"] if r["synthetic"] == "none" else \
        f"{r['synthetic']}: {r['synthetic_images']} images ({r['synthetic_settings']})"
    return [r["arm"], str(r.get("model", "")), str(r.get("loss", "")), str(r.get("mixing", "")),
            f"{r.get('augment', '')}" + (f" + {r['batch_mix']}" if r.get("batch_mix") not in (None, "none") else ""),
            f"{r.get('optimizer', '')}, {r.get('lr', '')}", str(r.get("epochs", "")), str(r.get("batch_size", "")),
            synthetic, fmt_loss(r["test_loss"], r["test_loss_std"], n), fmt_pct(r["accuracy"], r["accuracy_std"], n),
            fmt_pct(r["many"], r["many_std"], n), fmt_pct(r["medium"], r["medium_std"], n),
            fmt_pct(r["few"], r["few_std"], n), fmt_gap(r["gap_closed"]), fmt_gap(r["gap_closed_few"]), str(n)]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in display_cells(r)) + " |" for r in rows]
    return "\n".join(lines)
