"""The filter stage of an experiment: score every generated image with each configured filter (cached per
filter under ``filter-scores/<name>/``), decide under the thresholds, and pick the images arms train on.

Files (the synthetic store itself is never rewritten; rejected images stay on disk):

- ``filter/decisions.jsonl``: one line per generated image, keyed by ``item_id``: its class, ``kept`` (passed
  every filter), ``selected`` (among the first ``target`` kept images of its class, the ones arms use),
  and per filter its decision, score and reason;
- ``filter/summary.json`` / ``summary.csv``: per class, planned / rejected by each filter / kept / selected /
  target / short (the target count not reached: raise ``plan.overgenerate``).

The ``filter`` stage redoes (old folder kept aside) when the thresholds, the targets or the set change; a
filter's scores are recomputed only when what they depend on changes (the set, the classifier, the model).
"""

from __future__ import annotations

import csv
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from synthaug.config import fingerprint
from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.filters.base import Filter, create_filter
from synthaug.plan import take_per_class
from synthaug.utils import atomic_write, read_json, write_json

if TYPE_CHECKING:
    from synthaug.experiment import Experiment

log = logging.getLogger(__name__)


def filter_parts(exp: Experiment) -> dict[str, Any]:
    """What the decisions depend on: the generated set (the whole plan), every filter's config, the targets."""
    return {"synthetic": exp.generated_fp, "filters": [f.model_dump(mode="json") for f in exp.cfg.filters],
            "targets": exp.plan_counts().tolist()}


def generated_in_plan_order(exp: Experiment) -> LabeledImages:
    """Every image of the current plan, in plan order."""
    items = exp.plan_items()
    images = exp.synthetic().load(mode=exp.splits.train.mode, ids=[it.item_id for it in items])
    position = {item_id: i for i, item_id in enumerate(images.ids)}
    return images.subset([position[it.item_id] for it in items if it.item_id in position])


def cached_scores(exp: Experiment, flt: Filter, images: LabeledImages) -> dict[str, np.ndarray]:
    """Stage ``filter-scores/<name>``: the filter's scores of ``images`` (computed once per scoring input)."""
    rel = f"filter-scores/{flt.name}"
    parts = {"synthetic": exp.generated_fp, "scoring": flt.config.scoring_part(), **flt.scoring_inputs(exp)}
    path = exp.dir / rel / "scores.json"
    with exp._stage(rel, parts, redo=True) as summary:
        if summary is not None:
            log.info("Filter %s: scoring %d synthetic images.", flt.name, len(images))
            scores = flt.score(exp, images, progress=exp.cfg.progress)
            write_json(path, {"item_ids": images.ids, "scores": {k: np.asarray(v, dtype=np.float64).tolist()
                                                                 for k, v in scores.items()}})
            summary.update(images=len(images))
    saved = read_json(path)
    if saved["item_ids"] != images.ids:  # the fingerprint covers the plan, so this is a damaged folder
        raise SettingError(f"{path} scores other images than the current plan; delete {exp.dir / rel} to rescore.")
    return {k: np.asarray(v, dtype=np.float64) for k, v in saved["scores"].items()}


def run_filters(exp: Experiment) -> dict:
    """Stage ``filter``: decisions for every generated image; returns the stage record (with per-class counts)."""
    if not exp.cfg.filters:
        raise SettingError("No filters are configured; add a `filters:` list to the config (see README, Filters).")
    if not exp.splits.schema.is_single_label:
        raise SettingError(f"filters keep per-class counts of single-label data, but this data has "
                           f"{len(exp.splits.schema.groups)} label groups; remove `filters`.")
    images = generated_in_plan_order(exp)
    folder = exp.dir / "filter"
    with exp._stage("filter", filter_parts(exp), redo=True) as summary:
        if summary is not None:
            summary.update(_decide_all(exp, images, folder))
    return read_json(folder / "done.json")


def _decide_all(exp: Experiment, images: LabeledImages, folder) -> dict:
    names = list(images.schema.groups[0].classes)
    classes, targets = images.labels[:, 0], exp.plan_counts()
    keep = np.ones(len(images), dtype=bool)
    decisions = {}
    for cfg in exp.cfg.filters:
        flt = create_filter(cfg)
        decisions[flt.name] = flt.decide(cached_scores(exp, flt, images), classes, names)
        keep &= decisions[flt.name].keep
    selected = take_per_class(classes, keep, targets)
    with atomic_write(folder / "decisions.jsonl", "w") as f:
        for i, item_id in enumerate(images.ids):
            line = {"item_id": item_id, "class": names[classes[i]], "kept": bool(keep[i]), "selected": bool(selected[i]),
                    "filters": {n: {"kept": bool(d.keep[i]), "score": float(d.score[i]), "reason": d.reasons[i]}
                                for n, d in decisions.items()}}
            f.write(json.dumps(line) + "\n")
    rows = []
    for c, name in enumerate(names):
        mask = classes == c
        row = {"class": name, "planned": int(mask.sum()), "target": int(targets[c])}
        row.update({f"rejected_{n}": int((mask & ~d.keep).sum()) for n, d in decisions.items()})
        row.update(kept=int((mask & keep).sum()), selected=int((mask & selected).sum()))
        row["short"] = row["target"] - row["selected"]
        rows.append(row)
    write_json(folder / "summary.json", {"filters": list(decisions), "classes": rows})
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    short = {r["class"]: r["short"] for r in rows if r["short"] > 0}
    if short:
        log.warning("Filters left classes short of their target count %s; raise plan.overgenerate (now %g) to "
                    "generate more images per class.", short, exp.cfg.plan.overgenerate)
    return {"planned": len(images), "kept": int(keep.sum()), "selected": int(selected.sum()), "short": short}


def selected_ids(exp: Experiment) -> list[str]:
    """The images arms with ``use_filters`` train on (runs the stage if needed), in plan order."""
    run_filters(exp)
    with open(exp.dir / "filter" / "decisions.jsonl") as f:
        ids = [rec["item_id"] for rec in map(json.loads, f) if rec["selected"]]
    if not ids:
        raise SettingError(f"The filters rejected every generated image (see {exp.dir / 'filter' / 'summary.csv'}), so "
                           "a filtered arm has nothing to train on: loosen the thresholds (e.g. a lower "
                           "min_probability or keep_top_percent), check the generator's samples, or set "
                           "use_filters: false on the arm.")
    return ids


def format_summary(record: dict, rows: list[dict]) -> str:
    """A plain-text per-class table of the filter stage (for the CLI)."""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).rjust(width[c]) for c in cols) for r in rows]
    lines.append(f"{record['planned']} generated, {record['kept']} kept by every filter, {record['selected']} used "
                 "by filtered arms.")
    return "\n".join(lines)
