"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official files: the python or binary version, as the
downloaded ``.tar.gz`` (read in place, never extracted) or its extracted folder.

The python version is a set of Python 2 pickles. They are read by an unpickler that builds nothing but numpy
uint8 arrays, lists, ints and byte strings: any other global in a file is refused before it can run.

The loaders return the full official training set as ``train`` (ids ``cifar10:train:<index into data_batch_1..5>``)
and the official test set as ``test``; validation images are carved later from the training images a long tail
leaves out (:class:`~synthaug.data.longtail.SplitsWithoutValidation`), never from the test set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synthaug.data.longtail import SplitsWithoutValidation
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.data.sources import DataError, register_source
from synthaug.errors import SettingError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

log = logging.getLogger(__name__)

DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar.html"
PIXELS = 3 * 32 * 32  # one image: the R, then G, then B plane of 32×32, row-major


@dataclass(frozen=True)
class _Layout:
    """One official version of one dataset: its archive, the folder inside it, and its files."""

    source: str  # the data.source name
    archive: str
    folder: str
    md5: str  # the official archive's MD5
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, ...]  # python: one pickle with every name list; binary: one text file per label kind
    label_kinds: tuple[str, ...]  # python key prefixes (b"<kind>labels"), in binary label-byte order
    binary: bool  # fixed-size records instead of pickles

    @property
    def dataset(self) -> str:
        return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[self.source]


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
LAYOUTS: tuple[_Layout, ...] = (
    _Layout("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py", "c58f30108f718f92721af3b95e74349a",
            _CIFAR10_BATCHES, ("test_batch",), ("batches.meta",), ("",), False),
    _Layout("cifar10", "cifar-10-binary.tar.gz", "cifar-10-batches-bin", "c32a1d4ab5d03f1284b67883e8d87530",
            tuple(f"{b}.bin" for b in _CIFAR10_BATCHES), ("test_batch.bin",), ("batches.meta.txt",), ("",), True),
    _Layout("cifar100", "cifar-100-python.tar.gz", "cifar-100-python", "eb9058c3a382ffc7106e4002c42a8d85",
            ("train",), ("test",), ("meta",), ("coarse_", "fine_"), False),
    _Layout("cifar100", "cifar-100-binary.tar.gz", "cifar-100-binary", "03b5dce01913d631647c71ecec9e9cb8",
            ("train.bin",), ("test.bin",), ("coarse_label_names.txt", "fine_label_names.txt"), ("coarse_", "fine_"),
            True),
)
_NUM_CLASSES = {"": 10, "coarse_": 20, "fine_": 100}


# --------------------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class _Location:
    layout: _Layout
    path: Path  # the archive, or the extracted folder
    archive: bool

    def where(self, member: str) -> str:
        if self.archive:
            return f"{self.path} (member {self.layout.folder}/{member})"
        return str(self.path / member)


def _foreign(layout: _Layout, source: str, found: str) -> DataError:
    return DataError(f"{found} is {layout.dataset} ({layout.folder}), but data.source is {source!r}; set data.source: "
                     f"{layout.source}, or point data.root at the {_dataset_of(source)} files.")


def _dataset_of(source: str) -> str:
    return next(lay.dataset for lay in LAYOUTS if lay.source == source)


def _expected(source: str) -> str:
    names = [n for lay in LAYOUTS if lay.source == source for n in (lay.archive, lay.folder + "/")]
    return ", ".join(names)


def _archive_layout(path: Path, source: str) -> _Layout:
    """The layout of an archive, from the folder its first member is in (so a renamed archive still reads)."""
    try:
        with tarfile.open(path, "r|*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: not a readable tar archive ({e}). data.root must name the folder holding "
                        f"{_expected(source)} as downloaded from {DOWNLOAD} (or one of them); download it again."
                        ) from None
    top = "" if first is None else first.name.removeprefix("./").split("/")[0]
    layout = next((lay for lay in LAYOUTS if lay.folder == top), None)
    if layout is None:
        raise DataError(f"{path}: not a {_dataset_of(source)} archive: its first member is "
                        f"{'nothing' if first is None else repr(first.name)}, not in one of the official folders "
                        f"({', '.join(lay.folder for lay in LAYOUTS if lay.source == source)}). Download "
                        f"{' or '.join(lay.archive for lay in LAYOUTS if lay.source == source)} from {DOWNLOAD}.")
    if layout.source != source:
        raise _foreign(layout, source, str(path))
    return layout


def _locate(root: Path, source: str) -> _Location:
    """Where the files of ``source`` are under ``data.root``: an extracted folder first, then an archive; python
    version before binary."""
    if root.is_file():
        return _Location(_archive_layout(root, source), root, True)
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist. Point it at the folder holding {_expected(source)} "
                        f"(downloaded from {DOWNLOAD}), at that folder itself, or at the archive file.")
    for lay in LAYOUTS:  # data.root is an extracted folder itself
        if (root / lay.train[0]).is_file() and (root.name == lay.folder or (root / lay.meta[0]).is_file()):
            if lay.source != source:
                raise _foreign(lay, source, str(root))
            return _Location(lay, root, False)
    for lay in (lay for lay in LAYOUTS if lay.source == source):
        if (root / lay.folder).is_dir():
            return _Location(lay, root / lay.folder, False)
        if (root / lay.archive).is_file():
            return _Location(_archive_layout(root / lay.archive, source), root / lay.archive, True)
    for lay in (lay for lay in LAYOUTS if lay.source != source):
        for name in (lay.folder, lay.archive):
            if (root / name).exists():
                raise _foreign(lay, source, str(root / name))
    present = sorted(p.name for p in root.iterdir())
    shown = ", ".join(present[:8]) + (f", ... ({len(present)} in all)" if len(present) > 8 else "") or "nothing"
    raise DataError(f"data.root {root} holds no {_dataset_of(source)} files (it has: {shown}); expected "
                    f"{_expected(source)} as downloaded from {DOWNLOAD}.")


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(location: _Location) -> None:
    got = _md5(location.path)
    if got != location.layout.md5:
        log.warning("%s: MD5 %s differs from the official %s of %s %s; the archive may be altered or damaged. "
                    "It is read anyway; download it again from %s if reading fails or results look off.",
                    location.path, got, location.layout.md5, location.layout.dataset, location.layout.archive,
                    DOWNLOAD)


def _read_members(location: _Location, names: list[str]) -> dict[str, bytes]:
    """The bytes of each member; an archive is read in one pass, in memory."""
    if not location.archive:
        missing = [n for n in names if not (location.path / n).is_file()]
        if missing:
            raise DataError(f"{location.path}: no file(s) {missing}; the extracted {location.layout.dataset} folder is "
                            f"incomplete. Extract {location.layout.archive} again, or point data.root at the archive.")
        return {n: (location.path / n).read_bytes() for n in names}
    _check_md5(location)
    wanted = {f"{location.layout.folder}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    member = None
    try:
        with tarfile.open(location.path, "r|*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        after = f" after member {member.name}" if member is not None else ""
        raise DataError(f"{location.path}: the archive is truncated or corrupt ({e}){after}. Download "
                        f"{location.layout.archive} again from {DOWNLOAD} (official MD5 {location.layout.md5})."
                        ) from None
    missing = [f"{location.layout.folder}/{n}" for n in names if n not in found]
    if missing:
        raise DataError(f"{location.path}: no member(s) {missing}; the archive is incomplete or not the official "
                        f"{location.layout.archive}. Download it again from {DOWNLOAD}.")
    return found


# --------------------------------------------------------------------------------------------------------
# The python version: Python 2 pickles, read with an allow-list of globals


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as a Python 3 protocol-2 pickle uses it for byte strings, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed for latin1 byte strings only, not {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 (and the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: numpy arrays, lists, dicts, ints and byte strings only."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: the pickle names the global {module}.{name}, which no CIFAR file holds (only numpy "
                "arrays, lists, ints and byte strings); it was refused and nothing of it ran. This is not the "
                f"official file: download the archive again from {DOWNLOAD}.") from None


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _BatchUnpickler(data, where).load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure of untrusted bytes is a bad file)
        raise DataError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is truncated or "
                        f"damaged. Download the archive again from {DOWNLOAD}.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}; not a CIFAR file.")
    return obj


def _field(batch: dict, key: bytes, where: str) -> Any:
    if key not in batch:
        raise DataError(f"{where}: no key {key!r} (keys: {sorted(batch, key=repr)}); not a CIFAR batch of this "
                        "dataset.")
    return batch[key]


def _python_batch(data: bytes, where: str, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 3072) uint8, labels (N, len(kinds))) of one pickled batch."""
    batch = _unpickle(data, where)
    pixels = _field(batch, b"data", where)
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
            and pixels.shape[1] == PIXELS):
        what = f"a {pixels.dtype} array of shape {pixels.shape}" if isinstance(pixels, np.ndarray) else \
            type(pixels).__name__
        raise DataError(f"{where}: b'data' is {what}, not a uint8 array of shape (N, {PIXELS}).")
    labels = []
    for kind in kinds:
        values = _field(batch, f"{kind}labels".encode(), where)
        if not (isinstance(values, (list, np.ndarray)) and len(values) == len(pixels)
                and all(isinstance(v, (int, np.integer)) for v in values)):
            raise DataError(f"{where}: b'{kind}labels' is not a list of {len(pixels)} ints (one per image).")
        labels.append(np.asarray(values, dtype=np.int64))
    return pixels, np.stack(labels, axis=1)


def _python_names(data: bytes, where: str, kinds: tuple[str, ...]) -> dict[str, list[str]]:
    meta = _unpickle(data, where)
    names = {}
    for kind in kinds:
        values = _field(meta, f"{kind}label_names".encode(), where)
        if not isinstance(values, list) or not all(isinstance(v, (bytes, str)) for v in values):
            raise DataError(f"{where}: b'{kind}label_names' is not a list of names.")
        names[kind] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    return names


# --------------------------------------------------------------------------------------------------------
# The binary version: fixed-size records


def _binary_batch(data: bytes, where: str, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    record = len(kinds) + PIXELS
    if not data or len(data) % record:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {record}-byte records ({len(kinds)} "
                        f"label byte(s) + {PIXELS} pixel bytes); the file is truncated or not a batch of this "
                        "dataset.")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return rows[:, len(kinds):], rows[:, : len(kinds)].astype(np.int64)


def _text_names(data: bytes, where: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text ({e}); expected one class name per line.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------
# Loading


def _read_split(location: _Location, files: dict[str, bytes], members: tuple[str, ...],
                kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 32, 32, 3), labels (N, len(kinds))) of the concatenated members, in order."""
    read = _binary_batch if location.layout.binary else _python_batch
    parts = [read(files[m], location.where(m), kinds) for m in members]
    planes = np.concatenate([pixels for pixels, _ in parts]).reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), np.concatenate([labels for _, labels in parts])


def _class_names(location: _Location, files: dict[str, bytes]) -> dict[str, list[str]]:
    lay = location.layout
    if lay.binary:
        names = {k: _text_names(files[m], location.where(m)) for k, m in zip(lay.label_kinds, lay.meta)}
    else:
        names = _python_names(files[lay.meta[0]], location.where(lay.meta[0]), lay.label_kinds)
    for i, kind in enumerate(lay.label_kinds):
        if len(names[kind]) != _NUM_CLASSES[kind]:
            meta = lay.meta[i] if lay.binary else lay.meta[0]
            raise DataError(f"{location.where(meta)}: {len(names[kind])} {kind}label_names, but {lay.dataset} has "
                            f"{_NUM_CLASSES[kind]}; the file is not the official one.")
    return names


def _load_cifar(source: str, root: str | Path, kind: str, val_per_class: int, split_seed: int
                ) -> SplitsWithoutValidation:
    if val_per_class < 0:
        raise SettingError(f"data.val_per_class must be >= 0, but got {val_per_class}.")
    location = _locate(Path(root), source)
    lay = location.layout
    files = _read_members(location, [*lay.train, *lay.test, *lay.meta])
    names = _class_names(location, files)
    column = lay.label_kinds.index(kind)
    schema = LabelSchema.single(names[kind])
    splits = {}
    for split, members in (("train", lay.train), ("test", lay.test)):
        pixels, labels = _read_split(location, files, members, lay.label_kinds)
        labels = labels[:, column]
        bad = np.flatnonzero((labels < 0) | (labels >= len(names[kind])))
        if len(bad):
            raise DataError(f"{location.path} ({split}): label {labels[bad[0]]} of image {bad[0]} is not a class index "
                            f"0..{len(names[kind]) - 1}; the files are damaged. Download them again from {DOWNLOAD}.")
        ids = [f"{source}:{split}:{i}" for i in range(len(labels))]
        splits[split] = LabeledImages(schema, labels[:, None], ids, pixels=pixels, mode="RGB",
                                      origin=str(location.path))
    return SplitsWithoutValidation(splits["train"], splits["train"].subset([]), splits["test"],
                                   val_per_class=val_per_class, split_seed=split_seed)


@register_source("cifar10")
def load_cifar10(*, root: str | Path, val_per_class: int = 50, split_seed: int = 0) -> SplitsWithoutValidation:
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes, RGB 32×32.

    ``root`` is the folder holding ``cifar-10-python.tar.gz`` or ``cifar-10-binary.tar.gz`` (or its extracted
    folder), that folder itself, or the archive. ``val_per_class`` validation images per class are carved with
    ``split_seed`` from the training images not kept (see :func:`~synthaug.data.longtail.carve_validation`).

    Raises:
        DataError: no CIFAR-10 files, CIFAR-100 files, a truncated or foreign archive, a missing member, a pickle
            that names any global other than numpy's array builders.
    """
    return _load_cifar("cifar10", root, "", val_per_class, split_seed)


@register_source("cifar100")
def load_cifar100(
    *, root: str | Path, label: Literal["fine", "coarse"] = "fine", val_per_class: int = 10, split_seed: int = 0,
) -> SplitsWithoutValidation:
    """CIFAR-100: 50,000 training and 10,000 test images, labelled with 100 fine classes or 20 superclasses
    (``label: coarse``); otherwise as :func:`load_cifar10`."""
    if label not in ("fine", "coarse"):
        raise SettingError(f"data.label must be 'fine' or 'coarse' for cifar100, but got {label!r}.")
    return _load_cifar("cifar100", root, f"{label}_", val_per_class, split_seed)
