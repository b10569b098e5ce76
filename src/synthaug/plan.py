"""Generation plans: how many synthetic images, for which labels, with which seeds.

The arithmetic (:func:`balance_counts`, :func:`fixed_counts`, :func:`ratio_counts`) works on count
arrays; :func:`make_items` turns per-class counts into :class:`PlanItem` s whose ids are stable (class key +
running number), so growing a plan keeps the seeds of the items it already had.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from synthaug.data.schema import LabelSchema
from synthaug.utils import atomic_write, derive_seed


@dataclass(frozen=True)
class PlanItem:
    """One image to generate.

    Attributes:
        item_id: unique, stable id; also the image's file stem in the store.
        labels: one class index per label group, or None for an unconditional sample.
        seed: the item's own seed, derived from (experiment seed, item id).
        prompt: the text prompt or caption, for text-conditioned generators.
        source_ids: ids of real images the item is made from (image-conditioned methods).
    """

    item_id: str
    labels: tuple[int, ...] | None
    seed: int
    prompt: str | None = None
    source_ids: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = None if self.labels is None else list(self.labels)
        d["source_ids"] = list(self.source_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "PlanItem":
        return cls(item_id=str(d["item_id"]), labels=None if d["labels"] is None else tuple(d["labels"]),
                   seed=int(d["seed"]), prompt=d.get("prompt"), source_ids=tuple(d.get("source_ids", ())))


def balance_counts(real_counts: Sequence[int], target: int | None = None) -> np.ndarray:
    """Synthetic images per class to fill every class up to ``target`` (default: the largest class)."""
    real = np.asarray(real_counts, dtype=np.int64)
    target = int(real.max()) if target is None else int(target)
    if target < 0:
        raise ValueError(f"plan target must be >= 0, but got {target=}.")
    return np.maximum(target - real, 0)


def fixed_counts(num_classes: int, per_class: Mapping[int, int]) -> np.ndarray:
    """``per_class[c]`` synthetic images for the named classes, none for the rest."""
    out = np.zeros(num_classes, dtype=np.int64)
    for c, n in per_class.items():
        if not 0 <= c < num_classes:
            raise ValueError(f"plan class index {c} is out of range 0..{num_classes - 1}.")
        if n < 0:
            raise ValueError(f"plan count for class {c} must be >= 0, but got {n}.")
        out[c] = n
    return out


def ratio_counts(real_counts: Sequence[int], ratio: float) -> np.ndarray:
    """round(ratio × real count) synthetic images per class."""
    if ratio < 0:
        raise ValueError(f"plan ratio must be >= 0, but got {ratio=}.")
    return np.rint(np.asarray(real_counts, dtype=np.float64) * ratio).astype(np.int64)


def make_items(
    schema: LabelSchema, counts: Sequence[int], *, seed: int, group: int = 0, prompts: Sequence[str] | None = None,
) -> list[PlanItem]:
    """Plan items for per-class ``counts`` in one label group of a single-label schema.

    Item ids are ``<class name>-<k:05d>``; ``prompts`` (one per class) fills ``PlanItem.prompt``.
    """
    if not schema.is_single_label:
        raise ValueError("make_items plans single-label data; plan multi-attribute data from source images.")
    g = schema.groups[group]
    if len(counts) != len(g.classes):
        raise ValueError(f"counts has {len(counts)} entries but group {g.name!r} has {len(g.classes)} classes.")
    items = []
    for c, n in enumerate(counts):
        for k in range(int(n)):
            item_id = f"{g.classes[c]}-{k:05d}"
            items.append(PlanItem(item_id, (c,), derive_seed(seed, item_id),
                                  prompt=None if prompts is None else prompts[c]))
    return items


def unconditional_items(n: int, *, seed: int, prefix: str = "uncond") -> list[PlanItem]:
    """``n`` items with no label (for unconditional sampling and pseudo-labelling)."""
    return [PlanItem(f"{prefix}-{k:05d}", None, derive_seed(seed, f"{prefix}-{k:05d}")) for k in range(n)]


def save_plan(items: Sequence[PlanItem], path: str | Path) -> None:
    with atomic_write(path, "w") as f:
        for it in items:
            f.write(json.dumps(it.to_dict()) + "\n")


def load_plan(path: str | Path) -> list[PlanItem]:
    with open(path) as f:
        return [PlanItem.from_dict(json.loads(line)) for line in f if line.strip()]
