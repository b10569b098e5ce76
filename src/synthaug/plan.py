"""Generation plans: how many synthetic images, for which labels, with which seeds.

The arithmetic (:func:`balance_counts`, :func:`fixed_counts`, :func:`ratio_counts`) works on count
arrays; :func:`make_items` turns per-class counts into :class:`PlanItem` s whose ids are stable (class key +
running number), so growing a plan keeps the seeds of the items it already had.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from synthaug.data.schema import LabelSchema
from synthaug.data.stats import ShotThresholds
from synthaug.utils import atomic_write, derive_seed
from synthaug.errors import SettingError
from synthaug.data.captions import caption, check_template


# The largest plan accepted. A plan item costs ~220 bytes and ~1-5 µs to build (measured: 10^6 items, 216 MB), so 10^7
# items is ~2 GB of plan before one image is made, and ~10 GPU-days of sampling at 10 images/s; published
# long-tail recipes stay below it (ImageNet-LT balanced to its head class: ~1.1 M items). A plan over it is a typo
# (an extra zero, a ratio meant as a share), refused with its size before any item is built.
MAX_PLAN_ITEMS = 10**7
# ... and at most this many synthetic images per real training image (a 1-shot, 10-class set: 10^5 items; few-shot
# recipes use tens to a few thousand per real image)
MAX_ITEMS_PER_TRAINING_IMAGE = 10**4


def check_plan_size(n_items: float, *, setting: str, n_train: int | None = None) -> None:
    """Refuses a plan of ``n_items`` items that is absurd for the data: over :data:`MAX_PLAN_ITEMS`, or over
    :data:`MAX_ITEMS_PER_TRAINING_IMAGE` × ``n_train`` (the training images, when known).

    Raises:
        SettingError: naming the plan's size, the bound and ``setting``, the setting to change.
    """
    if n_items > MAX_PLAN_ITEMS:
        bound = f"the most synthaug plans is {MAX_PLAN_ITEMS:,}"
    elif n_train is not None and n_items > MAX_ITEMS_PER_TRAINING_IMAGE * max(n_train, 1):
        bound = (f"more than {MAX_ITEMS_PER_TRAINING_IMAGE:,} per training image ({n_train:,} training images, so "
                 f"at most {MAX_ITEMS_PER_TRAINING_IMAGE * max(n_train, 1):,})")
    else:
        return
    size = f"{int(n_items):,}" if n_items < 1e30 else f"{n_items:.3g}"
    raise SettingError(f"The generation plan has {size} items; {bound}. Lower {setting}.")


@dataclass(frozen=True, slots=True)
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
        raise SettingError(f"plan target must be >= 0, but got {target=}.")
    check_plan_size(target, setting="plan.target")  # one class's count alone (before int64 arithmetic)
    return np.maximum(target - real, 0)


def fixed_counts(num_classes: int, per_class: Mapping[int, int]) -> np.ndarray:
    """``per_class[c]`` synthetic images for the named classes, none for the rest."""
    out = np.zeros(num_classes, dtype=np.int64)
    for c, n in per_class.items():
        if not 0 <= c < num_classes:
            raise SettingError(f"plan class index {c} is out of range 0..{num_classes - 1}.")
        if n < 0:
            raise SettingError(f"plan count for class {c} must be >= 0, but got {n}.")
        check_plan_size(n, setting="plan.counts")  # one class's count alone (before it overflows int64)
        out[c] = n
    return out


def ratio_counts(real_counts: Sequence[int], ratio: float) -> np.ndarray:
    """round(ratio × real count) synthetic images per class."""
    if ratio < 0:
        raise SettingError(f"plan ratio must be >= 0, but got {ratio=}.")
    counts = np.rint(np.asarray(real_counts, dtype=np.float64) * ratio)
    check_plan_size(float(counts.sum()), setting="plan.ratio")  # before the cast to int64
    return counts.astype(np.int64)


def overgenerate_counts(counts: Sequence[int], factor: float) -> np.ndarray:
    """ceil(factor × count) per class: the images to generate so that each class can still reach ``counts``
    after filters reject some (``factor`` >= 1)."""
    if factor < 1:
        raise SettingError(f"plan.overgenerate must be >= 1, but got {factor=}.")
    wanted = np.ceil(np.asarray(counts, dtype=np.float64) * factor - 1e-9)
    check_plan_size(float(wanted.sum()), setting="plan.overgenerate (or the plan's counts)")
    return wanted.astype(np.int64)


# the setting that sets each per-class strategy's counts (named when a plan is too large)
COUNT_SETTINGS = {"balance": "plan.target", "fixed": "plan.counts", "ratio": "plan.ratio"}


def generation_counts(target_counts: Sequence[int], *, strategy: str, overgenerate: float = 1.0,
                      n_train: int | None = None) -> np.ndarray:
    """The images to generate per class: ceil(``overgenerate`` × ``target_counts``), refused when the plan is too
    large (:func:`check_plan_size`) before any item is built; O(classes) time and memory.

    Args:
        target_counts: the plan's per-class counts (``plan.strategy`` ``strategy``: balance, fixed or ratio).
        n_train: the training images, for the bound per training image.

    Raises:
        SettingError: naming the plan's size, the bound and the setting to lower.
    """
    counts = overgenerate_counts(target_counts, overgenerate)
    setting = COUNT_SETTINGS[strategy] + (" or plan.overgenerate" if overgenerate != 1 else "")
    check_plan_size(float(counts.sum()), setting=setting, n_train=n_train)
    return counts


def take_per_class(classes: Sequence[int], keep: Sequence[bool], targets: Sequence[int]) -> np.ndarray:
    """A mask of the first ``targets[c]`` kept items of each class ``c``, in the given (plan) order.

    Args:
        classes: the class of every item.
        keep: whether every item may be taken (e.g. what the filters kept).
        targets: how many items each class takes at most.
    """
    classes, keep = np.asarray(classes, dtype=np.int64), np.asarray(keep, dtype=bool)
    taken = np.zeros(len(classes), dtype=bool)
    left = np.asarray(targets, dtype=np.int64).copy()
    for i in np.flatnonzero(keep):
        if left[classes[i]] > 0:
            taken[i] = True
            left[classes[i]] -= 1
    return taken


def make_items(
    schema: LabelSchema, counts: Sequence[int], *, seed: int, group: int = 0, prompts: Sequence[str] | None = None,
) -> list[PlanItem]:
    """Plan items for per-class ``counts`` in one label group of a single-label schema.

    Item ids are ``<class name>-<k:05d>``; ``prompts`` (one per class) fills ``PlanItem.prompt``.
    """
    if not schema.is_single_label:
        raise SettingError("make_items plans single-label data; plan multi-attribute data from source images.")
    g = schema.groups[group]
    if len(counts) != len(g.classes):
        raise SettingError(f"counts has {len(counts)} entries but group {g.name!r} has {len(g.classes)} classes.")
    check_plan_size(float(np.sum(np.asarray(counts, dtype=np.float64))), setting="the plan's counts")
    items = []
    for c, n in enumerate(counts):
        labels = (c,)  # one tuple shared by the class's items
        for k in range(int(n)):
            item_id = f"{g.classes[c]}-{k:05d}"
            items.append(PlanItem(item_id, labels, derive_seed(seed, item_id),
                                  prompt=None if prompts is None else prompts[c]))
    return items


def rare_classes(schema: LabelSchema, labels: np.ndarray, thresholds: ShotThresholds,
                 rare_shots: Sequence[str] = ("few",)) -> list[np.ndarray]:
    """Per label group, a boolean mask of its rare classes: those whose count in ``labels`` falls in one of the
    ``rare_shots`` groups ("few", "medium", "many") under ``thresholds``."""
    unknown = sorted(set(rare_shots) - {"many", "medium", "few"})
    if unknown or not rare_shots:
        raise SettingError(f"plan.rare_shots must name shot groups among 'few', 'medium', 'many', but got "
                         f"{list(rare_shots)}.")
    labels = np.asarray(labels).reshape(-1, len(schema.groups))
    counts = [np.bincount(labels[:, g], minlength=n) for g, n in enumerate(schema.group_sizes)]
    return [np.array([thresholds.group(int(n)) in rare_shots for n in c]) for c in counts]


def _item_stem(source_id: str) -> str:
    """A file-name-safe, unique stem for a source image id (which may be a path)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", source_id.rsplit(".", 1)[0]).strip("_")[-40:]
    return f"{slug}-{hashlib.sha1(source_id.encode()).hexdigest()[:6]}"


def rare_attribute_items(
    schema: LabelSchema, labels: np.ndarray, ids: Sequence[str], *, seed: int,
    thresholds: ShotThresholds = ShotThresholds(), rare_shots: Sequence[str] = ("few",),
    per_source: int | None = None, total: int | None = None, template: str | None = None,
) -> list[PlanItem]:
    """Plan items copied from real images that carry at least one rare attribute class.

    Each item takes the whole label vector of its source image (``source_ids`` = that image's id) and a
    caption listing its attributes (:func:`synthaug.data.captions.caption`; by default "A person
    wearing {attributes} clothes", underscores turned to spaces). Sources are ordered rarest first (by the
    training count of their rarest rare class, then by how many rare classes they carry, then a seeded
    shuffle); items go round-robin over that order. Item ``<source stem>-<copy:03d>`` keeps its labels,
    prompt and seed when the plan grows.

    Args:
        schema: the label schema.
        labels: (N, G) class indices of the training images.
        ids: the training images' ids.
        seed: the experiment seed (item seeds derive from it and the item id; it also breaks ties).
        thresholds: shot-group thresholds defining "rare" together with ``rare_shots``.
        rare_shots: the shot groups whose classes count as rare.
        per_source: images per source image; or
        total: images in all (the rarest sources first; several copies each when larger than the sources).
        template: the caption template; None picks the schema's default.

    Raises:
        ValueError: neither or both of ``per_source`` / ``total``, no image with a rare class, or a template
            field the schema lacks.
    """
    if template is not None:
        check_template(schema, template)
    labels, order, n_items = _rare_sources(schema, labels, ids, seed=seed, thresholds=thresholds,
                                           rare_shots=rare_shots, per_source=per_source, total=total)
    items = []
    for k in range(n_items):
        src = int(order[k % len(order)])
        item_id = f"{_item_stem(ids[src])}-{k // len(order):03d}"
        vec = tuple(int(v) for v in labels[src])
        items.append(PlanItem(item_id, vec, derive_seed(seed, item_id), prompt=caption(schema, vec, template),
                              source_ids=(ids[src],)))
    return items


def rare_attribute_counts(
    schema: LabelSchema, labels: np.ndarray, ids: Sequence[str], *, seed: int,
    thresholds: ShotThresholds = ShotThresholds(), rare_shots: Sequence[str] = ("few",),
    per_source: int | None = None, total: int | None = None, template: str | None = None,
) -> list[np.ndarray]:
    """Per label group, the per-class counts of :func:`rare_attribute_items`' plan (same arguments; the template
    is checked), computed without building its items: O(training images) time and memory whatever the plan's
    size.

    Raises:
        SettingError: as :func:`rare_attribute_items`.
    """
    if template is not None:
        check_template(schema, template)
    labels, order, n_items = _rare_sources(schema, labels, ids, seed=seed, thresholds=thresholds,
                                           rare_shots=rare_shots, per_source=per_source, total=total)
    rounds, rest = divmod(n_items, len(order))  # items go round-robin over the ordered sources
    return [rounds * np.bincount(labels[order, g], minlength=n) + np.bincount(labels[order[:rest], g], minlength=n)
            for g, n in enumerate(schema.group_sizes)]


def _rare_sources(schema: LabelSchema, labels: np.ndarray, ids: Sequence[str], *, seed: int,
                  thresholds: ShotThresholds, rare_shots: Sequence[str], per_source: int | None,
                  total: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(the (N, G) labels, the source images rarest first, the plan's size) of a rare-attribute plan, its size
    checked."""
    if (per_source is None) == (total is None):
        raise SettingError(f"Give exactly one of plan.per_source and plan.total, but got {per_source=}, {total=}.")
    if (per_source or total) < 1:
        raise SettingError(f"plan.per_source / plan.total must be >= 1, but got {per_source or total}.")
    labels = np.asarray(labels, dtype=np.int64).reshape(len(ids), len(schema.groups))
    rare = rare_classes(schema, labels, thresholds, rare_shots)
    counts = [np.bincount(labels[:, g], minlength=n) for g, n in enumerate(schema.group_sizes)]
    is_rare = np.stack([rare[g][labels[:, g]] for g in range(len(schema.groups))], 1)
    sources = np.flatnonzero(is_rare.any(1))
    if not len(sources):
        raise SettingError(f"No training image has a rare attribute class (shot groups {list(rare_shots)} with "
                         f"many > {thresholds.many}, few < {thresholds.few}); raise data.shots.few, or add "
                         "'medium' to plan.rare_shots.")
    count_of = np.stack([counts[g][labels[:, g]] for g in range(len(schema.groups))], 1)
    rarest = np.where(is_rare, count_of, np.iinfo(np.int64).max).min(1)[sources]
    tie = np.random.default_rng(derive_seed(seed, "rare-attributes")).permutation(len(sources))
    order = sources[np.lexsort((tie, -is_rare[sources].sum(1), rarest))]
    n_items = per_source * len(order) if per_source is not None else total
    check_plan_size(n_items, setting="plan.per_source" if per_source is not None else "plan.total",
                    n_train=len(ids))
    return labels, order, n_items


def unconditional_items(n: int, *, seed: int, prefix: str = "uncond") -> list[PlanItem]:
    """``n`` items with no label (for unconditional sampling and pseudo-labelling)."""
    check_plan_size(n, setting="pseudo.count")
    return [PlanItem(f"{prefix}-{k:05d}", None, derive_seed(seed, f"{prefix}-{k:05d}")) for k in range(n)]


def save_plan(items: Sequence[PlanItem], path: str | Path) -> None:
    with atomic_write(path, "w") as f:
        for it in items:
            f.write(json.dumps(it.to_dict()) + "\n")


def load_plan(path: str | Path) -> list[PlanItem]:
    with open(path) as f:
        return [PlanItem.from_dict(json.loads(line)) for line in f if line.strip()]
