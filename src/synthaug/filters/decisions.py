"""The filters' decisions over a generated set, written as files (the synthetic store is never rewritten;
rejected images stay on disk):

- ``decisions.jsonl``: one line per generated image, keyed by ``item_id``: its class, ``kept`` (passed every
  filter), ``selected`` (among the first ``target`` kept images of its class, the ones arms use), and per
  filter its decision, score and reason;
- ``summary.json`` / ``summary.csv``: per class, planned / rejected by each filter / kept / selected / target
  / short (the target count not reached: raise ``plan.overgenerate``).

Pure of the run: it takes the images, each filter's decision and the per-class targets.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.filters.base import Decision
from synthaug.plan import take_per_class
from synthaug.utils import atomic_write, write_json

log = logging.getLogger(__name__)


def write_decisions(images: LabeledImages, decisions: dict[str, Decision], targets: np.ndarray, folder: Path, *,
                    overgenerate: float = 1.0) -> dict:
    """Writes ``decisions.jsonl`` and ``summary.json``/``.csv`` into ``folder`` for ``images`` (plan order) under
    each filter's decision (an image must pass all); returns the counts (planned, kept, selected, short)."""
    names = list(images.schema.groups[0].classes)
    classes = images.labels[:, 0]
    keep = np.ones(len(images), dtype=bool)
    for decision in decisions.values():
        keep &= decision.keep
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
                    "generate more images per class.", short, overgenerate)
    return {"planned": len(images), "kept": int(keep.sum()), "selected": int(selected.sum()), "short": short}


def selected_ids(folder: Path) -> list[str]:
    """The ids of the selected images in ``folder/decisions.jsonl`` (plan order).

    Raises:
        SettingError: the filters rejected every image (names the summary and the fixes).
    """
    with open(folder / "decisions.jsonl") as f:
        ids = [rec["item_id"] for rec in map(json.loads, f) if rec["selected"]]
    if not ids:
        raise SettingError(f"The filters rejected every generated image (see {folder / 'summary.csv'}), so "
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
