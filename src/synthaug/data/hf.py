"""Hugging Face ``datasets`` data (``hf-dataset``): a folder written by ``save_to_disk`` (a ``DatasetDict`` or one
split), or parquet / arrow files (one file, or a folder of them, split by file name as ``load_dataset`` does:
``train-00000-of-00001.parquet``, ``validation-…``, ``test-…``).

Columns ``data.image_column`` (an ``Image`` feature, or a string column of file paths relative to ``data.root``)
and ``data.label_columns`` (one column: a ``ClassLabel`` gives the class names; plain integers are named
``class_<i>``; strings are their own names). Splits ``train``, ``validation`` (or ``val``) and ``test`` are ours;
a missing validation or test split (or a test split whose labels are all −1, the Hub's "no label") is carved
from train, class-balanced (``test_per_class``, ``val_per_class``, ``split_seed``).

Images are not decoded when the data is listed: an ``Image`` column whose rows hold file paths only is read as
those files; one that holds the encoded bytes (what ``save_to_disk`` and parquet usually store) stays in the
memory-mapped Arrow table and each image is decoded when asked for (:class:`ArrowImage`). Either way each image is
decoded once by the one-time image check (none inside :func:`~synthaug.data.sources.images_checked_before`).
``datasets`` is imported by the loader only, so importing synthaug stays light.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from synthaug.data.images import DECODE_ERRORS, open_image
from synthaug.data.lists import carve_from_train
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.data.sources import (
    _CHECK_IMAGES, DataError, DataSplits, OnBad, _check_classes_to_learn, _check_no_empty_class, _finish,
    _natural_key, _some, register_source,
)

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
CHECK_CHUNK = 4096  # rows handed to the image-check threads at a time


class ArrowImages:
    """The image column of one dataset split, read without decoding (``Image(decode=False)``)."""

    def __init__(self, dataset, column: str, mode: str):
        from datasets import Image

        self.dataset = dataset.select_columns([column]).cast_column(column, Image(decode=False))
        self.column, self.mode = column, mode

    def open(self, row: int):
        value = self.dataset[row][self.column]
        return open_image(io.BytesIO(value["bytes"]) if value["bytes"] is not None else value["path"], self.mode)

    def rows(self) -> np.ndarray:
        """One :class:`ArrowImage` per row, as ``LabeledImages.pixels``."""
        out = np.empty(len(self.dataset), dtype=object)
        out[:] = [ArrowImage(self, i) for i in range(len(self.dataset))]
        return out


class ArrowImage:
    """One row's image, decoded when called."""

    __slots__ = ("images", "row")

    def __init__(self, images: ArrowImages, row: int):
        self.images, self.row = images, row

    def __call__(self):
        return self.images.open(self.row)


def _open(root: Path) -> dict:
    """``{split name: Dataset}`` of a ``save_to_disk`` folder, or of parquet / arrow files."""
    import datasets
    from datasets.data_files import DataFilesDict, get_data_patterns

    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        loaded = datasets.load_from_disk(str(root))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if root.is_file():
        files = {"train": [str(root)]}
    elif root.is_dir():
        try:
            found = DataFilesDict.from_patterns(get_data_patterns(str(root)), str(root))
        except Exception:  # datasets' EmptyDatasetError: no data files at all
            found = {}
        files = {s: [f for f in v if f.endswith((".parquet", ".arrow"))] for s, v in found.items()}
        files = {s: v for s, v in files.items() if v}
    else:
        raise DataError(f"{root} not found (data.root); expected a save_to_disk folder or parquet/arrow files.")
    kinds = {Path(f).suffix for v in files.values() for f in v}
    if kinds - {".parquet", ".arrow"} or len(kinds) != 1:
        what = f"both parquet and arrow files ({_some(sorted(f for v in files.values() for f in v), 4)})" if kinds \
            else "no save_to_disk dataset (dataset_dict.json or state.json) and no .parquet or .arrow files"
        raise DataError(f"{root}: {what}. Point data.root at a save_to_disk folder, a .parquet/.arrow file, or a folder "
                        "of one kind of them.")
    try:
        return dict(datasets.load_dataset(kinds.pop()[1:], data_files=files))
    except Exception as e:  # an unreadable file: whatever pyarrow / datasets raise
        raise DataError(f"{root}: datasets could not read the data files ({type(e).__name__}: {e}).") from None


def _our_splits(parts: dict, root: Path) -> dict:
    """``{train/val/test: (their split name, Dataset)}``; other splits are left out with a warning."""
    ours: dict = {}
    for name, ds in parts.items():
        split = SPLITS.get(name)
        if split is None:
            log.warning("%s: split %r is not train, validation or test; it is left out.", root, name)
        elif split in ours:
            raise DataError(f"{root}: splits {ours[split][0]!r} and {name!r} are both the validation split; keep one.")
        else:
            ours[split] = (name, ds)
    if "train" not in ours:
        raise DataError(f"{root}: no 'train' split (splits: {sorted(parts)}); name the training split 'train'.")
    return ours


def _check_columns(root: Path, ours: dict, needed: dict[str, str]) -> None:
    for name, ds in ours.values():
        absent = [f"{c!r} ({field})" for c, field in needed.items() if c not in ds.column_names]
        if absent:
            raise DataError(f"{root}: split {name!r} has no column {', '.join(absent)}; its columns are "
                            f"{ds.column_names}. Set the field to one of them.")


def _raw_labels(ds, column: str):
    return ds.with_format("arrow")[column]


def _class_names(root: Path, ours: dict, column: str) -> tuple[list[str], str]:
    """(class names, kind of label column: "classlabel", "int" or "string")."""
    from datasets import ClassLabel, Value

    features = {name: ds.features[column] for name, ds in ours.values()}
    first = features[ours["train"][0]]
    if isinstance(first, ClassLabel):
        for name, f in features.items():
            if not isinstance(f, ClassLabel) or list(f.names) != list(first.names):
                raise DataError(f"{root}: split {name!r} has other classes in column {column!r} than 'train' "
                                f"({f} vs {first.names}); the splits must share one ClassLabel.")
        return list(first.names), "classlabel"
    if isinstance(first, Value) and first.dtype.startswith(("int", "uint")):
        top = max(int(np.max(_raw_labels(ds, column).to_numpy(), initial=0)) for _, ds in ours.values())
        return [f"class_{i}" for i in range(top + 1)], "int"
    if isinstance(first, Value) and first.dtype in ("string", "large_string"):
        values = set()
        for _, ds in ours.values():
            values.update(v for v in _raw_labels(ds, column).unique().to_pylist() if v is not None)
        return sorted(values, key=_natural_key), "string"
    raise DataError(f"{root}: label column {column!r} is {first}; expected a ClassLabel, integers or strings.")


def _labels(root: Path, name: str, ds, column: str, names: list[str], kind: str) -> np.ndarray | None:
    """Class indices of one split; None for a split with no labels (all −1)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = _raw_labels(ds, column)
    if raw.null_count:
        row = pc.index(pc.is_null(raw), True).as_py()
        raise DataError(f"{root}: split {name!r} row {row} has no value in label column {column!r}; label it or drop "
                        "the row.")
    if kind == "string":
        return np.asarray(pc.index_in(raw, value_set=pa.array(names)).to_numpy(), dtype=np.int64)
    labels = np.asarray(raw.to_numpy(), dtype=np.int64)
    if len(labels) and (labels == -1).all() and name != "train":
        log.info("%s: split %r has no labels (all -1); it is carved from train instead.", root, name)
        return None
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise DataError(f"{root}: split {name!r} row {bad[0]}: label {labels[bad[0]]} in column {column!r} is not a "
                        f"class index 0..{len(names) - 1}.")
    return labels


def _file_paths(root: Path, ds, column: str) -> list[Path] | None:
    """The image files of a column of paths, or of an ``Image`` column that stores paths only; None when the
    images are stored in the table."""
    import pyarrow.compute as pc
    from datasets import Image, Value

    feature = ds.features[column]
    base = root if root.is_dir() else root.parent
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        values = ds.with_format("arrow")[column]
    elif isinstance(feature, Image):
        values = ds.with_format("arrow").cast_column(column, Image(decode=False))[column]
        if not pc.all(pc.is_null(pc.struct_field(values, "bytes"))).as_py():
            return None
        values = pc.struct_field(values, "path")
    else:
        raise DataError(f"{root}: image column {column!r} is {feature}; expected an Image feature or file paths.")
    if values.null_count:
        raise DataError(f"{root}: image column {column!r} has rows with no image (row "
                        f"{pc.index(pc.is_null(values), True).as_py()}).")
    return [base / p for p in values.to_pylist()]


def _check_rows(images: np.ndarray, where: Sequence[str], on_bad_image: OnBad) -> tuple[list[int], list[str]]:
    """Decodes each stored image once, in threads, as :func:`~synthaug.data.sources.check_images` does files."""
    if not _CHECK_IMAGES.get():
        return list(range(len(images))), []

    def problem(image) -> str | None:
        try:
            image()
        except DECODE_ERRORS as e:
            return f"unreadable or corrupt image ({type(e).__name__}: {e})"
        return None

    problems = []
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        for start in range(0, len(images), CHECK_CHUNK):  # a chunk at a time: one future per row at once is ~1.6 kB
            problems += pool.map(problem, images[start:start + CHECK_CHUNK])
    good, skipped = [], []
    for i, p in enumerate(problems):
        if p is None:
            good.append(i)
        elif on_bad_image == "error":
            raise DataError(f"{where[i]}: {p}. Fix or remove the row, or set data.on_bad_image: skip.")
        else:
            skipped.append(f"{where[i]}: {p}")
    if skipped:
        log.warning("Skipped %d bad image(s):\n  %s", len(skipped), "\n  ".join(skipped))
    return good, skipped


def _in_table(schema: LabelSchema, root: Path, parts: list[tuple[str, str, ArrowImages, np.ndarray]],
              on_bad_image: OnBad) -> DataSplits:
    """Splits of images stored in the table: checked once, decoded on demand."""
    images = np.concatenate([a.rows() for _, _, a, _ in parts])
    labels = np.concatenate([lab for *_, lab in parts])
    ids = [f"{name}/{i}" for _, name, a, _ in parts for i in range(len(a.dataset))]
    where = [f"{root} split {i.split('/')[0]!r} row {i.split('/')[1]}" for i in ids]
    splits = np.asarray([split for split, _, a, _ in parts for _ in range(len(a.dataset))])
    good, skipped = _check_rows(images, where, on_bad_image)
    if not good:
        raise DataError(f"{root}: every image was skipped as bad ({len(skipped)}); nothing is left to use.")
    full = LabeledImages(schema, labels[good, None], [ids[i] for i in good], pixels=images[good],
                         mode=parts[0][2].mode, origin=str(root), skipped=skipped)
    splits = splits[good]
    train = np.flatnonzero(splits == "train")
    _check_no_empty_class(schema, full.labels[train], f"{root} (train split)", full.labels, [where[i] for i in good])
    return DataSplits(*(full.subset(np.flatnonzero(splits == s)) for s in ("train", "val", "test")))


@register_source("hf-dataset")
def load_hf_dataset(
    *, root: str | Path, image_column: str = "image", label_columns: Sequence[str] = ("label",), mode: str = "RGB",
    on_bad_image: OnBad = "error", test_per_class: int = 10, val_per_class: int = 5, split_seed: int = 0,
) -> DataSplits:
    """Loads a Hugging Face dataset from disk, as the module docstring describes.

    Raises:
        DataError: no dataset at ``root``, no train split, a missing column (naming the dataset's columns), a
            label that is not a class, a missing or corrupt image, too few images to carve a missing split.
    """
    root = Path(root)
    label_columns = list(label_columns)
    if len(label_columns) != 1:
        raise DataError(f"data.source 'hf-dataset' reads one label column, but data.label_columns is {label_columns}.")
    column = label_columns[0]
    ours = _our_splits(_open(root), root)
    _check_columns(root, ours, {image_column: "data.image_column", column: "data.label_columns"})
    names, kind = _class_names(root, ours, column)
    schema = LabelSchema.single(names, name=column)
    _check_classes_to_learn(schema, str(root))
    labelled = {}
    for split, (name, ds) in ours.items():
        labels = _labels(root, name, ds, column, names, kind)
        if labels is not None:
            labelled[split] = (name, ds, labels)
    files = {split: _file_paths(root, ds, image_column) for split, (_, ds, _) in labelled.items()}
    if all(f is not None for f in files.values()):
        order = list(labelled)
        splits = _finish(schema, np.concatenate([labelled[s][2] for s in order])[:, None],
                         [p for s in order for p in files[s]],
                         [f"{labelled[s][0]}/{i}" for s in order for i in range(len(files[s]))],
                         [f"split {labelled[s][0]!r} row {i}" for s in order for i in range(len(files[s]))],
                         [s for s in order for _ in files[s]], mode=mode, on_bad_image=on_bad_image,
                         origin=str(root), test_per_class=1, val_per_class=0, split_seed=0)
    else:
        splits = _in_table(schema, root, [(s, name, ArrowImages(ds, image_column, mode), labels)
                                          for s, (name, ds, labels) in labelled.items()], on_bad_image)
    missing = {s: n for s, n in (("test", test_per_class), ("val", val_per_class)) if s not in labelled}
    wanted = " and a ".join(repr({"val": "validation"}.get(s, s)) for s in missing)
    return carve_from_train(splits, missing, split_seed=split_seed, origin=str(root),
                            instead=f"the dataset a {wanted} split")
