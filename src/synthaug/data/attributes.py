"""The attribute-prediction layout of the DeepFashion attribute study: per-split image lists and attribute
index files.

Layout (``root`` may keep the text files in a ``split/`` sub-folder, as the DeepFashion archive does)::

    root/train.txt         one image path per line, relative to ``root`` (e.g. img/WOMEN/.../01_front.jpg)
    root/train_attr.txt    one line per image of train.txt: one 0-based class index per attribute group
    root/val.txt, val_attr.txt, test.txt, test_attr.txt    (val is optional)
    root/classes.yaml      optional class names (below); or pass ``classes`` / set ``data.classes``

Class names: a YAML (or JSON) mapping from group name to its classes in index order, either a list or one
space-separated string per line::

    pattern: floral graphic striped embroidered pleated solid lattice
    sleeve_length: [long_sleeve, short_sleeve, sleeveless]

Without class names, groups are called ``attr1`` … ``attrG`` and classes ``0`` … ``max index``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from synthaug.data.schema import LabelSchema
from synthaug.data.sources import DataError, DataSplits, OnBad, _finish, read_text, register_source

SPLITS = ("train", "val", "test")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


def read_class_names(path: str | Path) -> dict[str, list[str]]:
    """Reads a class-names file: ``{group: [class, ...]}`` from YAML/JSON lists or space-separated strings.

    Raises:
        DataError: the file is missing, not a mapping, or a group has no or repeated classes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Class-names file {path} not found.")
    try:
        raw = yaml.safe_load(read_text(path, "class-names file"))
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a mapping 'group: class1 class2 ...' (one group per line).")
    out = {}
    for group, classes in raw.items():
        names = classes.split() if isinstance(classes, str) else classes
        if not isinstance(names, list) or not names:
            raise DataError(f"{path}: group {group!r} needs a list of class names or a space-separated string, "
                            f"got {classes!r}.")
        out[str(group)] = [str(c) for c in names]
    return out


def _lists_dir(root: Path) -> Path:
    return root / "split" if (root / "split" / "train.txt").is_file() else root


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers (UTF-8; else an error naming the line)."""
    return [(n, line.strip()) for n, line in enumerate(read_text(path, what).split("\n"), 1) if line.strip()]


def _group_count(files: dict[Path, list[tuple[int, str]]]) -> int:
    """Without declared classes, the number of groups is the number of values most attribute lines have (not
    the first line's, so that a short first line is the one blamed)."""
    counts = Counter(len(text.split()) for lines in files.values() for _, text in lines)
    return counts.most_common(1)[0][0] if counts else 0


def _check_inferred_indices(schema: LabelSchema, labels: list[list[int]], splits: list[str],
                            where: list[str]) -> None:
    """Without class names, classes are 0 … the largest index; a large index that is a typo would make many
    classes with no training image. Names the index, its line, and the fix."""
    arr = np.asarray(labels, dtype=np.int64)
    train = arr[np.asarray(splits) == "train"]
    for g, group in enumerate(schema.groups):
        empty = sorted(set(range(len(group.classes))) - set(train[:, g].tolist()))
        if not empty:
            continue
        top = int(arr[:, g].max())
        line = where[int(np.flatnonzero(arr[:, g] == top)[0])]
        raise DataError(
            f"{line}: index {top} for group {group.name!r} makes classes 0..{top}, but {len(empty)} of them have no "
            f"training image ({', '.join(map(str, empty[:8]))}{', ...' if len(empty) > 8 else ''}). If {top} is a "
            "typo, fix that line; otherwise declare the class names (classes.yaml or data.classes).")


def _parse_attr_line(path: Path, lineno: int, line: str, names: Sequence[str], sizes: Sequence[int] | None
                     ) -> list[int]:
    """One attribute line as class indices; ``sizes`` (classes per group) bounds them when known."""
    fields = line.split()
    if len(fields) != len(names):
        raise DataError(f"{path} line {lineno}: expected {len(names)} integers (one per group: "
                        f"{', '.join(names)}), got {len(fields)}: {line!r}.")
    try:
        values = [int(v) for v in fields]
    except ValueError:
        raise DataError(f"{path} line {lineno}: expected whitespace-separated integers, got {line!r}.") from None
    for g, v in enumerate(values):
        top = None if sizes is None else sizes[g] - 1
        if v < 0 or (top is not None and v > top):
            allowed = "0-based indices" if top is None else f"0..{top}"
            raise DataError(f"{path} line {lineno}: value {v} for group {names[g]!r} is out of range "
                            f"({allowed}); fix the line or the declared classes.")
    return values


@register_source("deepfashion-attributes")
def load_attribute_lists(
    *, root: str | Path | None = None, classes: Mapping[str, Sequence[str]] | None = None,
    classes_file: str | Path | None = None, mode: str = "RGB", on_bad_image: OnBad = "error",
) -> DataSplits:
    """Loads the per-split list + attribute files described in the module docstring.

    Args:
        root: the dataset folder (``data.root``).
        classes: ``{group: [class names in index order]}`` (``data.classes``); wins over a class-names file.
        classes_file: a class-names file; default ``classes.yaml``/``.yml``/``.json`` in the lists folder
            or ``root``, if present.
        mode: PIL mode images are converted to.
        on_bad_image: "error" or "skip" a missing or corrupt image.

    Raises:
        DataError: a missing file, a list and attribute file of different lengths, a line with the wrong
            number of integers, an index out of range, a missing image — naming the file and line.
    """
    if root is None:
        raise DataError("data.source 'deepfashion-attributes' needs data.root (the folder with train.txt and "
                        "train_attr.txt).")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Attribute data folder {root} does not exist or is not a directory (data.root).")
    lists = _lists_dir(root)
    if classes is None:
        found = [p for p in ([Path(classes_file)] if classes_file else
                             [d / n for d in dict.fromkeys((lists, root)) for n in CLASS_FILES]) if p.is_file()]
        if classes_file and not found:
            raise DataError(f"Class-names file {classes_file} not found.")
        classes = read_class_names(found[0]) if found else None
    if classes is not None and not isinstance(classes, Mapping):
        raise DataError("data.classes for 'deepfashion-attributes' must map each group to its class names, "
                        f"e.g. {{pattern: [floral, graphic, ...]}}; got a {type(classes).__name__}.")
    schema = LabelSchema.from_dict(classes) if classes else None
    sizes = None if schema is None else schema.group_sizes
    names = None if schema is None else [g.name for g in schema.groups]

    files = {}
    for split in SPLITS:
        list_path, attr_path = lists / f"{split}.txt", lists / f"{split}_attr.txt"
        if not list_path.is_file() and split == "val":
            continue
        for p in (list_path, attr_path):
            if not p.is_file():
                raise DataError(f"{p} not found; the attribute layout needs {split}.txt and {split}_attr.txt "
                                f"in {lists}.")
        files[split] = (list_path, _read_lines(list_path, "image list"), attr_path,
                        _read_lines(attr_path, "attribute file"))
    if names is None:  # no declared classes: the number of values most lines have fixes the number of groups
        names = [f"attr{g + 1}" for g in range(_group_count({v[2]: v[3] for v in files.values()}))]

    labels, paths, ids, where, splits, label_lines = [], [], [], [], [], []
    for split, (list_path, images, attr_path, attrs) in files.items():
        if len(images) != len(attrs):
            raise DataError(f"{list_path} lists {len(images)} images but {attr_path} has {len(attrs)} attribute "
                            "lines; they must match line for line.")
        for (img_line, rel), (attr_line, text) in zip(images, attrs):
            vec = _parse_attr_line(attr_path, attr_line, text, names, sizes)
            labels.append(vec)
            paths.append(Path(rel) if Path(rel).is_absolute() else root / rel)
            ids.append(rel)
            where.append(f"{list_path.name} line {img_line}")
            label_lines.append(f"{attr_path} line {attr_line}")
            splits.append(split)
    if not labels:
        raise DataError(f"The image lists in {lists} are empty; the dataset has no images.")
    if schema is None:
        top = [max(v[g] for v in labels) + 1 for g in range(len(names))]
        schema = LabelSchema.from_dict({n: [str(c) for c in range(k)] for n, k in zip(names, top)})
        _check_inferred_indices(schema, labels, splits, label_lines)
    # every image has an explicit split, so _finish carves nothing (its per-class hold-out sizes are unused)
    return _finish(schema, labels, paths, ids, where, splits, mode=mode, on_bad_image=on_bad_image,
                   origin=str(root), test_per_class=1, val_per_class=0, split_seed=0)
