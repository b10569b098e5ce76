"""Split lists and COCO-style annotation files of the large long-tailed benchmarks.

``image-list``: ImageNet-LT and Places-LT (Liu et al. 2019, "Large-Scale Long-Tailed Recognition in an Open
World"), or any split given as ``relative/path label`` lines::

    data.root                    image paths in the lists are relative to it (unless absolute)
    ImageNet_LT_train.txt        train/n01440764/n01440764_190.JPEG 0        (data.train_list)
    ImageNet_LT_val.txt          optional (data.val_list); without it validation is carved from train
    ImageNet_LT_test.txt         val/n01440764/ILSVRC2012_val_00000293.JPEG 0 (data.test_list)
    classnames.txt               optional (data.class_names): one name per line in index order, or
                                 ``index name`` lines

List files are relative to ``data.root`` unless absolute. Without class names a class is called after the
folder all its training images sit in (the synset, ``n01440764``), else ``class_<index>``.

``inaturalist``: the COCO-style json of iNaturalist 2017/2018/2019 (``images`` [{id, file_name}],
``annotations`` [{image_id, category_id}], ``categories`` [{id, name}]); ``file_name`` is relative to
``data.root``. Labels are the category ids in sorted order (0 … C−1), named by ``categories[].name``. The 2018
and 2019 test files have no annotations (their labels are not public): then, as the long-tailed papers that
report iNaturalist do, the validation file is the test split, and validation is carved from train. Class indices
(in ``data.classes``) are these dense indices, which equal the category ids of iNaturalist 2017-2019 (0 … C−1).

Both sources: a class name that repeats (ImageNet has two "crane" classes) is made unique with its index,
``crane (134)``, with a warning; ``data.classes`` keeps a subset of classes, by name or index (seed 002's
90-class ImageNet-LT subset), re-indexed 0 … K−1 in the order it lists them, as ``data.classes`` orders the
classes of every source. Images are listed, not decoded: the one-time image check of
:func:`synthaug.data.sources.check_images` decodes each once (skipped when the experiment recorded it).
"""

from __future__ import annotations

import json
import logging
from array import array
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from synthaug.config_hints import closest
from synthaug.data.schema import LabelSchema
from synthaug.data.sources import (
    DataError, DataSplits, OnBad, _finish, _some, balanced_holdout, read_text, register_source,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# Class names and subsets, shared by both sources


def unique_names(names: Sequence[str], origin: str) -> list[str]:
    """``names`` with each repeated name made unique by its index (``crane`` → ``crane (134)``), with a warning
    naming them."""
    counts = Counter(names)
    repeated = sorted(n for n, k in counts.items() if k > 1)
    if not repeated:
        return list(names)
    out = [f"{n} ({i})" if counts[n] > 1 else n for i, n in enumerate(names)]
    renamed = [f"{names[i]!r} → {out[i]!r}" for i in range(len(names)) if counts[names[i]] > 1]
    log.warning("%s: %d class name(s) repeat; each is told apart by its index: %s. Use these names in data.classes "
                "and plan.counts.", origin, len(repeated), _some(renamed, 12))
    return out


def select_classes(names: Sequence[str], original: Sequence[str], wanted: Sequence[str | int], origin: str
                   ) -> tuple[np.ndarray, list[str]]:
    """The classes ``data.classes`` keeps, by (unique) name or index.

    Returns:
        (old index → new index, −1 for a class left out; the kept names), new indices in the order of ``wanted``.

    Raises:
        DataError: an unknown name (with the closest known one), an index out of range, a name that two classes
            share, a class listed twice.
    """
    if isinstance(wanted, (Mapping, str)):
        raise DataError(f"{origin}: data.classes keeps a subset of classes: give a list of class names or indices, "
                        f"not {wanted!r}.")
    by_name = {n: i for i, n in enumerate(names)}
    shared = Counter(original)
    picked = []
    for w in wanted:
        if isinstance(w, int) and not isinstance(w, bool):
            if not 0 <= w < len(names):
                raise DataError(f"{origin}: data.classes index {w} is out of range; the classes are 0..{len(names) - 1}.")
            picked.append(w)
        elif str(w) in by_name:
            picked.append(by_name[str(w)])
        elif shared[str(w)] > 1:
            both = [n for n, o in zip(names, original) if o == str(w)]
            raise DataError(f"{origin}: data.classes names {w!r}, which {len(both)} classes share; write the one you "
                            f"mean: {_some(both)}.")
        else:
            hint = closest(str(w), names)
            raise DataError(f"{origin}: data.classes names an unknown class {w!r}"
                            f"{f'; did you mean {hint!r}?' if hint else ''}. Classes: {_some(names)}.")
    twice = sorted({names[i] for i in picked if picked.count(i) > 1})
    if twice:
        raise DataError(f"{origin}: data.classes lists class(es) {twice} more than once; list each once.")
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[picked] = np.arange(len(picked))
    return remap, [names[i] for i in picked]


def read_class_names(path: Path) -> list[str]:
    """Class names in index order from a file of one name per line, or of ``index name`` lines (any order).

    Raises:
        DataError: a missing file, a blank line among plain names, an index out of range or repeated, an index
            missing — naming the file and line.
    """
    if not path.is_file():
        raise DataError(f"Class-names file {path} not found (data.class_names).")
    lines = [(n, line.strip()) for n, line in enumerate(read_text(path, "class-names file").split("\n"), 1)]
    while lines and not lines[-1][1]:
        lines.pop()
    if not lines:
        raise DataError(f"Class-names file {path} is empty; give one class name per line in index order.")
    filled = [(n, text) for n, text in lines if text]
    split = [text.split(maxsplit=1) for _, text in filled]
    if not all(len(p) == 2 and p[0].isdigit() for p in split):  # one name per line
        blank = next((n for n, text in lines if not text), None)
        if blank is not None:
            raise DataError(f"{path} line {blank}: blank line; with one class name per line, line k names class k-1. "
                            "Remove the line or write the class name.")
        return [text for _, text in lines]
    names: dict[int, tuple[int, str]] = {}
    for (n, _), (index, name) in zip(filled, split):
        i = int(index)
        if i in names:
            raise DataError(f"{path} line {n}: index {i} is named twice (also on line {names[i][0]}); keep one.")
        names[i] = (n, name.strip())
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        top = max(names)
        raise DataError(f"{path} line {names[top][0]}: index {top}, but {len(names)} classes are named, so the indices "
                        f"must be 0..{len(names) - 1}; no name for index(es) {_some(missing)}. Name every class once.")
    return [names[i][1] for i in range(len(names))]


def carve_from_train(splits: DataSplits, per_class: Mapping[str, int], *, split_seed: int, origin: str,
                     instead: str) -> DataSplits:
    """``splits`` with ``per_class[split]`` images per class moved from train to ``split`` ("test", "val"):
    class-balanced and seeded by :func:`~synthaug.data.sources.balanced_holdout` (test first, as sources without
    splits carve them), for a source that lacks those splits.

    Raises:
        DataError: a class with too few training images, naming it and the fixes (``instead`` names the option
            that gives the split instead).
    """
    per_class = {s: n for s, n in per_class.items() if n}
    if not per_class:
        return splits
    train = splits.train
    counts = train.class_counts()
    need = sum(per_class.values())
    few = np.flatnonzero(counts <= need)
    asked = " + ".join(f"{n} {s}" for s, n in per_class.items())
    if len(few):
        listed = _some([f"{train.schema.groups[0].classes[c]!r}: {counts[c]}" for c in few], 6)
        raise DataError(f"{origin}: {asked} image(s) per class are carved from train, but class(es) have too few "
                        f"training images to keep any: {listed}. Give {instead}, or lower "
                        f"{' / '.join(f'data.{s}_per_class' for s in per_class)} (val_per_class 0: no validation).")
    held, train_idx = balanced_holdout(train.labels[:, 0], list(per_class.values()), seed=split_seed)
    log.info("%s: %s image(s) per class carved from train (data.*_per_class, data.split_seed).", origin, asked)
    out = {"val": splits.val, "test": splits.test}
    out.update({s: train.subset(idx) for s, idx in zip(per_class, held)})
    return DataSplits(train.subset(train_idx), out["val"], out["test"])


def _data_root(root: str | Path, source: str, needed: Mapping[str, object], example: str) -> Path:
    """``data.root`` as a folder, once the options ``needed`` are given."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"The {source} data folder {root} does not exist or is not a directory (data.root).")
    if any(v is None for v in needed.values()):
        raise DataError(f"data.source {source!r} needs data.{' and data.'.join(needed)} (e.g. {example}).")
    return root


def _resolve(root: Path, name: str | Path) -> Path:
    return Path(name) if Path(name).is_absolute() else root / name


class _Listing:
    """The images of one or more split files as parallel columns: image path as written, label, where it was
    listed (file name and line or entry number), split."""

    def __init__(self):
        self.rel: list[str] = []
        self.labels = array("q")
        self.numbers = array("q")
        self.files: list[tuple[str, str, str, int]] = []  # (file name, split, "line {}" / "annotations[{}]", first row)

    def start(self, path: Path, split: str, unit: str) -> None:
        self.files.append((path.name, split, unit, len(self.rel)))

    def keep_classes(self, remap: np.ndarray) -> None:
        """Keeps the images of the classes ``remap`` maps to an index (≥ 0), relabelled."""
        labels = remap[np.frombuffer(self.labels, dtype=np.int64)]
        keep = labels >= 0
        numbers = np.frombuffer(self.numbers, dtype=np.int64)
        starts = np.asarray([f[3] for f in self.files] + [len(self.rel)])
        kept_before = np.concatenate([[0], np.cumsum(keep)])
        self.files = [(n, s, u, int(kept_before[start])) for (n, s, u, _), start in zip(self.files, starts)]
        self.rel = [r for r, k in zip(self.rel, keep.tolist()) if k]
        self.labels, self.numbers = array("q", labels[keep].tobytes()), array("q", numbers[keep].tobytes())

    def finish(self, schema_names: Sequence[str], group: str, root: Path, origin: str, *, mode: str,
               on_bad_image: OnBad) -> DataSplits:
        n = len(self.rel)
        where, splits = [], []
        bounds = [f[3] for f in self.files[1:]] + [n]
        for (name, split, unit, start), end in zip(self.files, bounds):
            where += [f"{name} {unit.format(k)}" for k in self.numbers[start:end]]
            splits += [split] * (end - start)
        labels = np.frombuffer(self.labels, dtype=np.int64).reshape(n, 1)
        return _finish(LabelSchema.single(schema_names, name=group), labels, [root / r for r in self.rel],
                       list(self.rel), where, splits, mode=mode, on_bad_image=on_bad_image, origin=origin,
                       test_per_class=1, val_per_class=0, split_seed=0)  # explicit splits: _finish carves nothing


# --------------------------------------------------------------------------------------------------------
# image-list


def _read_list(path: Path, split: str, listing: _Listing) -> None:
    """Appends the ``path label`` lines of one split list to ``listing``."""
    if not path.is_file():
        raise DataError(f"Image list {path} not found (data.{split}_list); paths are relative to data.root unless "
                        "absolute.")
    listing.start(path, split, "line {}")
    rel, labels, numbers = listing.rel, listing.labels, listing.numbers
    for n, line in enumerate(read_text(path, "image list").split("\n"), 1):
        fields = line.rsplit(maxsplit=1)
        if not fields:
            continue
        if len(fields) == 1:
            raise DataError(f"{path} line {n}: expected 'relative/path label' (an image path, a space, a class index), "
                            f"got {line.strip()!r}. Add the label after a space.")
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"{path} line {n}: label {fields[1]!r} is not an integer class index (expected "
                            f"'relative/path label', e.g. 'train/n01440764/n01440764_190.JPEG 0').") from None
        if label < 0:
            raise DataError(f"{path} line {n}: label {label} is negative; class indices start at 0.")
        rel.append(fields[0].strip())
        labels.append(label)
        numbers.append(n)
    if len(listing.files) and listing.files[-1][3] == len(rel):
        raise DataError(f"Image list {path} has no lines; expected 'relative/path label' lines.")


def _folder_names(listing: _Listing, num_classes: int) -> list[str]:
    """Each class called after the one folder all its training images sit in (the synset), else
    ``class_<index>``. Training lines only: test lists are often flat (Places-LT's ``val_256/...``)."""
    end = listing.files[1][3] if len(listing.files) > 1 else len(listing.rel)
    folder: dict[int, str | None] = {}
    for rel, label in zip(listing.rel[:end], listing.labels[:end]):
        parts = rel.replace("\\", "/").rsplit("/", 2)
        parent = parts[-2] if len(parts) > 1 and parts[-2] else None
        if folder.setdefault(label, parent) != parent:
            folder[label] = None
    return [folder.get(c) or f"class_{c}" for c in range(num_classes)]


def _check_numbered_classes(listing: _Listing, labels: np.ndarray) -> None:
    """Without class names, classes are 0 … the largest label; a large label that is a typo would make many classes
    with no training image. Names that label's line and the fix."""
    end = listing.files[1][3] if len(listing.files) > 1 else len(labels)
    empty = np.flatnonzero(np.bincount(labels[:end], minlength=int(labels.max()) + 1) == 0)
    if len(empty):
        at = int(np.argmax(labels))
        name, _, unit, _ = next(f for f in reversed(listing.files) if f[3] <= at)
        raise DataError(f"{name} {unit.format(listing.numbers[at])}: label {labels[at]} makes classes 0..{labels[at]}, "
                        f"but {len(empty)} of them have no training image ({_some(empty.tolist())}). If it is a typo, "
                        "fix the line; otherwise give the class names (data.class_names) or keep a subset (data.classes).")


@register_source("image-list")
def load_image_list(
    *, root: str | Path, train_list: str | Path | None = None, val_list: str | Path | None = None,
    test_list: str | Path | None = None, class_names: str | Path | None = None,
    classes: Sequence[str | int] | None = None, mode: str = "RGB", on_bad_image: OnBad = "error",
    val_per_class: int = 2, split_seed: int = 0,
) -> DataSplits:
    """Loads ``relative/path label`` split lists (ImageNet-LT, Places-LT), as the module docstring describes.

    Args:
        root: the folder image paths are relative to (``data.root``).
        train_list, val_list, test_list: the split lists; ``val_list`` is optional.
        class_names: a class-names file (one per line, or ``index name`` lines).
        classes: a subset of classes to keep, by name or index, re-indexed in this order.
        mode: PIL mode images are converted to.
        on_bad_image: "error" or "skip" a missing or corrupt image.
        val_per_class: without ``val_list``, validation images carved from train per class (0: none).
        split_seed: the seed of that carving.

    Raises:
        DataError: a missing list, a line without a label, a label that is not an integer or is out of range of
            the class names, an unknown class in ``classes``, a missing or corrupt image — naming file and line.
    """
    root = _data_root(root, "image-list", {"train_list": train_list, "test_list": test_list},
                      "ImageNet_LT_train.txt and ImageNet_LT_test.txt")
    lists = {"train": _resolve(root, train_list), "val": val_list and _resolve(root, val_list),
             "test": _resolve(root, test_list)}
    listing = _Listing()
    for split, path in lists.items():
        if path:
            _read_list(path, split, listing)
    labels = np.frombuffer(listing.labels, dtype=np.int64)
    origin = str(lists["train"])
    if class_names is not None:
        names_path = _resolve(root, class_names)
        original = read_class_names(names_path)
        bad = np.flatnonzero(labels >= len(original))
        if len(bad):
            name, _, unit, _ = next(f for f in reversed(listing.files) if f[3] <= bad[0])
            raise DataError(f"{name} {unit.format(listing.numbers[bad[0]])}: label {labels[bad[0]]} is out of range: "
                            f"{names_path} names {len(original)} classes (0..{len(original) - 1}). Fix the label, or "
                            "the class-names file.")
    else:
        original = _folder_names(listing, int(labels.max()) + 1)
        if classes is None:
            _check_numbered_classes(listing, labels)
    names = unique_names(original, origin)
    if classes is not None:
        remap, names = select_classes(names, original, classes, origin)
        listing.keep_classes(remap)
    splits = listing.finish(names, "label", root, origin, mode=mode, on_bad_image=on_bad_image)
    if lists["val"]:
        return splits
    return carve_from_train(splits, {"val": val_per_class}, split_seed=split_seed, origin=origin,
                            instead="data.val_list (e.g. ImageNet_LT_val.txt)")


# --------------------------------------------------------------------------------------------------------
# inaturalist


def _read_coco(path: Path, field: str) -> dict:
    if not path.is_file():
        raise DataError(f"Annotation file {path} not found (data.{field}); paths are relative to data.root unless "
                        "absolute.")
    try:
        doc = json.loads(read_text(path, "annotation file"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: expected a COCO-style object with 'images', 'annotations' and 'categories' lists "
                        "(iNaturalist's train2018.json layout).")
    return doc


def _categories(path: Path, doc: dict) -> tuple[dict[int, int], list[str]]:
    """(category id → dense index by sorted id, names in index order)."""
    cats = doc.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{path}: no 'categories' list; the training annotation file must list the categories "
                        "[{id, name}, ...].")
    try:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every entry of 'categories' needs an integer 'id' (and a 'name').") from None
    ids = sorted(by_id)
    return {cid: i for i, cid in enumerate(ids)}, [by_id[cid] for cid in ids]


def _read_annotations(path: Path, doc: dict, split: str, dense: dict[int, int], listing: _Listing) -> None:
    """Appends one labelled image per annotation of ``doc`` to ``listing``."""
    try:
        files = {img["id"]: img["file_name"] for img in doc["images"]}
    except (KeyError, TypeError):
        raise DataError(f"{path}: every entry of 'images' needs an 'id' and a 'file_name'.") from None
    listing.start(path, split, "annotations[{}]")
    rel, labels, numbers = listing.rel, listing.labels, listing.numbers
    for k, a in enumerate(doc["annotations"]):
        at = f"{path} annotations[{k}]"
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise DataError(f"{at}: expected an object with 'image_id' and 'category_id', got {a!r}.")
        if a["image_id"] not in files:
            raise DataError(f"{at}: image_id {a['image_id']!r} is not in the file's 'images'.")
        label = dense.get(a["category_id"])
        if label is None:
            raise DataError(f"{at}: category_id {a['category_id']!r} is not a category of the training file "
                            f"({len(dense)} categories, ids {_some(sorted(dense), 4)}).")
        rel.append(str(files[a["image_id"]]))
        labels.append(label)
        numbers.append(k)


@register_source("inaturalist")
def load_inaturalist(
    *, root: str | Path, train_json: str | Path | None = None, val_json: str | Path | None = None,
    test_json: str | Path | None = None, classes: Sequence[str | int] | None = None, mode: str = "RGB",
    on_bad_image: OnBad = "error", val_per_class: int = 1, split_seed: int = 0,
) -> DataSplits:
    """Loads iNaturalist's COCO-style annotation files, as the module docstring describes.

    Without a ``test_json`` that has annotations (the 2018/2019 test files have none), the validation file is
    the test split (how long-tailed papers report iNaturalist 2018) and ``val_per_class`` images per class are
    carved from train for validation (default 1: the smallest iNaturalist 2018 classes have 2 training images;
    0 keeps the official training set whole, with no validation split).

    Raises:
        DataError: a missing file, invalid JSON, a training or validation file without ``annotations``, an
            annotation naming an unknown image or category, an unknown class in ``classes``, a bad image.
    """
    root = _data_root(root, "inaturalist", {"train_json": train_json, "val_json": val_json},
                      "train2018.json and val2018.json")
    paths = {"train": _resolve(root, train_json), "val": _resolve(root, val_json)}
    docs = {split: _read_coco(path, f"{split}_json") for split, path in paths.items()}
    if test_json is not None:
        paths["test"] = _resolve(root, test_json)
        docs["test"] = _read_coco(paths["test"], "test_json")
    for split in ("train", "val"):
        if "annotations" not in docs[split]:
            raise DataError(f"{paths[split]} has no 'annotations': it has no labels, so it cannot be the {split} "
                            "split. Give the labelled file (train2018.json / val2018.json).")
    labelled_test = "test" in docs and bool(docs["test"].get("annotations"))
    if not labelled_test:
        why = f"{paths['test']} has no annotations (its labels are not public)" if "test" in docs else "no data.test_json"
        log.info("%s: testing on the validation file %s, as long-tailed papers report iNaturalist; validation is "
                 "carved from train (data.val_per_class=%d).", why, paths["val"], val_per_class)
    dense, original = _categories(paths["train"], docs["train"])
    listing = _Listing()
    roles = {"train": "train", "val": "val" if labelled_test else "test", "test": "test"}
    for split, doc in docs.items():
        if split != "test" or labelled_test:
            _read_annotations(paths[split], doc, roles[split], dense, listing)
    del docs
    origin = str(paths["train"])
    names = unique_names(original, origin)
    if classes is not None:
        remap, names = select_classes(names, original, classes, origin)
        listing.keep_classes(remap)
    splits = listing.finish(names, "label", root, origin, mode=mode, on_bad_image=on_bad_image)
    if labelled_test:
        return splits
    return carve_from_train(splits, {"val": val_per_class}, split_seed=split_seed, origin=origin,
                            instead="a labelled data.test_json")
