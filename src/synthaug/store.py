"""The synthetic set on disk: ``images/<bucket>/<item>.png`` plus ``metadata.jsonl``.

Loadable with ``datasets.load_dataset("imagefolder", data_dir=root)`` and usable as a training set by
diffusers' example scripts (``file_name`` + ``text`` columns). Images sit in 256 bucket folders (the first two
hex digits of a hash of the item id), so a 1 M-image set has about 4 k files per folder.

Crash safety: images are written under hidden temporary names (``.tmp-…``); every ``sync_every`` images (and at
the end of a run) the batch is flushed: the file system is synced, the images renamed into place and synced
again, and only then are their manifest lines appended (one ``write`` + fsync). So a listed image is always a
complete one, and durability costs two syncs per batch instead of two fsyncs per image. A run that dies loses
at most its unflushed batch, which a resumed run regenerates. On re-open a torn last line, duplicate lines and
listed-but-missing images are repaired.

Several writers (ranks under ``accelerate launch``): rank 0 appends to ``metadata.jsonl``, rank k > 0 to its own
journal ``.store/rank-<k>.jsonl``; only the exclusive steps (:meth:`SyntheticStore.open` with ``repair=True`` and
:meth:`SyntheticStore.merge`, run by one process while the others wait at a barrier) delete temporary files,
fold journals into the manifest or rewrite it, so no process touches another's files while it writes.

Opening is cheap: ``.store/index.npz`` holds the listed ids, file names and labels and the manifest size it
describes; while the manifest is unchanged and no journal is pending, opening reads that index instead of
parsing (and stat-ing) every line. ``verify=True`` forces the full check.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import StoreError  # noqa: F401  (re-exported)
from synthaug.plan import PlanItem, load_plan, save_plan
from synthaug.utils import atomic_write, read_json, write_json

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
IMAGES = "images"
STATE = ".store"  # journals of ranks > 0 and the index; hidden, so `imagefolder` ignores it
SYNC_EVERY = 256  # default images per durable batch

_SAFE_STEM = re.compile(r"[\w.+-]{1,120}")


def file_stem(item_id: str) -> str:
    """A file name stem for an item id: the id itself when it is a plain name (letters, digits, ``._+-``,
    not starting with a dot), else a slug plus a short hash, so a class name with ``/``, ``..`` or spaces
    never creates folders or escapes ``images/``."""
    if _SAFE_STEM.fullmatch(item_id) and not item_id.startswith("."):
        return item_id
    slug = re.sub(r"[^\w.+-]+", "_", item_id).strip("._")[:80]
    return f"{slug or 'item'}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def image_path(item_id: str) -> str:
    """The image's path inside the store: ``images/<2 hex digits>/<stem>.png`` (256 buckets)."""
    return f"{IMAGES}/{hashlib.sha1(item_id.encode()).hexdigest()[:2]}/{file_stem(item_id)}.png"


def _syncfs(path: Path) -> None:
    """Flushes the file system holding ``path`` (Linux ``syncfs``; ``sync`` elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


@dataclass
class _Pending:
    tmp: Path
    final: Path
    item_id: str
    rec: dict


class SyntheticStore:
    """A synthetic image set rooted at ``root``.

    Args:
        root: the folder (created if needed).
        schema: the label schema; saved as ``schema.json`` and checked on re-open.
        sync_every: images per durable batch (see the module docstring); 1 makes every image durable at once.
        rank: the writing process under ``accelerate launch`` (0 when alone); chooses the journal.
        verify: on open, parse every manifest line and check every listed image, even when the index is fresh.

    The listing is read on first use (or by :meth:`open`).
    """

    def __init__(self, root: str | Path, schema: LabelSchema, *, sync_every: int = SYNC_EVERY, rank: int = 0,
                 verify: bool = False):
        if sync_every < 1:
            raise StoreError(f"sync_every must be >= 1 image, but got {sync_every=}.")
        self.root = Path(root)
        self.schema = schema
        self.sync_every = sync_every
        self.rank = rank
        self.verify = verify
        (self.root / IMAGES).mkdir(parents=True, exist_ok=True)
        (self.root / STATE).mkdir(exist_ok=True)
        schema_path = self.root / "schema.json"
        if schema_path.exists():
            saved = read_json(schema_path)
            if saved != schema.to_dict():
                raise StoreError(f"{schema_path} holds another label schema ({saved}); use another folder.")
        else:
            write_json(schema_path, schema.to_dict())
        # id -> (file_name, label ids), compact: file_name None when it is image_path(id), label tuples shared
        self._rows: dict[str, tuple[str | None, tuple[int, ...] | None]] | None = None
        self._label_tuples: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._pending: list[_Pending] = []

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    @property
    def index_path(self) -> Path:
        return self.root / STATE / "index.npz"

    @property
    def journal_path(self) -> Path:
        """Where this process appends manifest lines: the manifest itself for rank 0, else its own journal."""
        return self.metadata_path if self.rank == 0 else self.root / STATE / f"rank-{self.rank}.jsonl"

    def _journals(self) -> list[Path]:
        return sorted((self.root / STATE).glob("rank-*.jsonl"))

    # ---------------------------------------------------------------------------------------------- reading
    @property
    def _listing(self) -> dict[str, tuple[str, tuple[int, ...] | None]]:
        if self._rows is None:
            self.open()
        return self._rows

    def _row(self, item_id: str, file_name: str, labels) -> tuple[str | None, tuple[int, ...] | None]:
        """A listing row in its compact form (a 100 k-item listing is ~15 MB smaller than plain tuples)."""
        if labels is not None:
            labels = tuple(labels)
            labels = self._label_tuples.setdefault(labels, labels)
        return (None if file_name == image_path(item_id) else file_name), labels

    def __len__(self) -> int:
        return len(self._listing)

    def done_ids(self) -> set[str]:
        return set(self._listing)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._listing

    def records(self) -> list[dict]:
        """Every listed manifest line (parses the manifest: for summaries, not per item)."""
        listed = self._listing
        out: dict[str, dict] = {}
        for path in [self.metadata_path, *self._journals()]:
            for rec in _parse_lines(path, strict=False):
                if rec.get("item_id") in listed:
                    out.setdefault(rec["item_id"], rec)
        return list(out.values())

    def open(self, *, repair: bool = True) -> "SyntheticStore":
        """(Re)reads the listing: from the index when it is fresh, else by parsing every line.

        Args:
            repair: this process may rewrite the store (drop a torn line, duplicates, listed-but-missing images;
                fold journals into the manifest; delete temporary files; write the index). Under several
                processes only one does so, while the others wait; they open with ``repair=False``.
        """
        self._pending = []
        if not self.verify and not self._journals() and self._read_index():
            return self
        rows, dirty = self._scan()
        self._rows = rows
        if repair:
            if dirty or self._journals():
                self._rewrite()
            self.write_index()
        return self

    def remove_temporaries(self) -> None:
        """Deletes images written but never listed (a crashed run's). Only while no other process writes."""
        for folder in [self.root / IMAGES, *(p for p in (self.root / IMAGES).iterdir() if p.is_dir())]:
            for tmp in folder.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)

    def _scan(self) -> tuple[dict[str, tuple[str, tuple[int, ...] | None]], bool]:
        """Parses the manifest and the journals; returns the listing and whether anything needs repair."""
        rows: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        dirty = False
        for path in [self.metadata_path, *self._journals()]:
            if not path.exists():
                continue
            torn: list[bool] = []
            for rec in _parse_lines(path, strict=True, torn=torn):
                item_id = rec.get("item_id")
                if item_id in rows:
                    dirty = True
                    continue
                if not (self.root / rec["file_name"]).is_file():
                    log.warning("%s lists %s but the image is missing; it will be regenerated.", path,
                                rec["file_name"])
                    dirty = True
                    continue
                rows[item_id] = self._row(item_id, rec["file_name"], rec.get("label_ids"))
            dirty = dirty or bool(torn)
        return rows, dirty

    def _rewrite(self) -> None:
        """Writes the listed lines (manifest first, then the journals) as the new manifest; drops the journals."""
        keep = set(self._rows)
        with atomic_write(self.metadata_path, "w") as f:
            for path in [self.metadata_path, *self._journals()]:
                for rec in _parse_lines(path, strict=False):
                    if rec.get("item_id") in keep:
                        keep.discard(rec["item_id"])
                        f.write(json.dumps(rec) + "\n")
        for journal in self._journals():
            journal.unlink()

    def _read_index(self) -> bool:
        """Loads the listing from the index when it describes the current manifest; False when it does not."""
        try:
            with np.load(self.index_path, allow_pickle=False) as z:
                size = self.metadata_path.stat().st_size if self.metadata_path.exists() else 0
                if int(z["manifest_size"]) != size:
                    return False
                ids = _unpack(z["ids"])
                files = _unpack(z["files"])
                labels, labelled = z["labels"], z["labelled"]
        except (OSError, KeyError, ValueError):
            return False
        rows = {}
        for i, (item_id, file_name) in enumerate(zip(ids, files)):
            rows[item_id] = self._row(item_id, file_name, labels[i].tolist() if labelled[i] else None)
        self._rows = rows
        return True

    def write_index(self) -> None:
        """Writes ``.store/index.npz`` for the current manifest (call only with no journal pending)."""
        rows = self._listing
        groups = len(self.schema.groups)
        labels = np.zeros((len(rows), groups), dtype=np.int64)
        labelled = np.zeros(len(rows), dtype=bool)
        for i, (_, lab) in enumerate(rows.values()):
            if lab is not None:
                labels[i], labelled[i] = lab, True
        size = self.metadata_path.stat().st_size if self.metadata_path.exists() else 0
        with atomic_write(self.index_path, "wb") as f:
            np.savez(f, ids=_pack(rows), files=_pack(f or image_path(i) for i, (f, _) in rows.items()), labels=labels,
                     labelled=labelled, manifest_size=np.int64(size))

    # ---------------------------------------------------------------------------------------------- writing
    def attach_plan(self, items: Sequence[PlanItem]) -> list[PlanItem]:
        """Records the plan and returns the items still to generate, in plan order.

        A plan may grow between runs; an item whose labels or seed changed is an error, since its image
        on disk no longer matches it.
        """
        plan_path = self.root / "plan.jsonl"
        listed = self._listing
        if plan_path.exists():
            old = {it.item_id: it for it in load_plan(plan_path)}
            changed = [it.item_id for it in items if it.item_id in listed and old.get(it.item_id, it) != it]
            if changed:
                raise StoreError(f"{self.root}: {len(changed)} item(s) already generated under another plan "
                                 f"(e.g. {changed[:3]}); their labels, prompt or seed changed. Use a new "
                                 "output folder, or delete this one to regenerate.")
        ids = {it.item_id for it in items}
        if len(ids) != len(items):
            raise StoreError("Plan item ids must be unique.")
        save_plan(items, plan_path)
        extra = sum(1 for i in listed if i not in ids)
        if extra:
            log.warning("%s holds %d image(s) not in the current plan; they stay on disk but are not "
                        "listed in the plan.", self.root, extra)
        return [it for it in items if it.item_id not in listed]

    def write(self, item: PlanItem, image: Image.Image, info: dict[str, Any] | None = None) -> dict:
        """Writes one image under a temporary name; it is listed at the next flush (every ``sync_every``
        images, and by :meth:`flush`). Returns its manifest line.

        ``info`` adds provenance fields (method, model, guidance, ...); a ``label_ids`` key in it overrides
        the item's labels (pseudo-labelling).

        Raises:
            StoreError: when the disk refuses the write (full, read-only, ...); nothing broken is listed.
        """
        info = dict(info or {})
        label_ids = info.pop("label_ids", None)
        label_ids = list(item.labels) if label_ids is None and item.labels is not None else label_ids
        file_name = image_path(item.item_id)
        final = self.root / file_name
        tmp = final.with_name(f".tmp-{final.name}")
        names = None if label_ids is None else self.schema.names(label_ids)
        rec = {
            "file_name": file_name,
            "item_id": item.item_id,
            "label": None if names is None else "|".join(names.values()),
            "labels": names,
            "label_ids": label_ids,
            "text": item.prompt,
            "seed": item.seed,
            "source_ids": list(item.source_ids),
            **info,
        }
        try:
            final.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                image.save(f, format="PNG")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self._fail(e, tmp)
        self._pending.append(_Pending(tmp, final, item.item_id, rec))
        if len(self._pending) >= self.sync_every:
            self.flush()
        return rec

    def flush(self) -> int:
        """Makes the written images durable and lists them; returns how many were listed."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        try:
            _syncfs(self.root)
            for p in batch:
                os.replace(p.tmp, p.final)
            _syncfs(self.root)
            lines = "".join(json.dumps(p.rec) + "\n" for p in batch).encode()
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            for p in batch:
                p.tmp.unlink(missing_ok=True)
            self._fail(e, self.journal_path)
        listing = self._listing
        for p in batch:
            listing[p.item_id] = self._row(p.item_id, p.rec["file_name"], p.rec["label_ids"])
        return len(batch)

    def discard_pending(self) -> None:
        """Drops written but unlisted images (after a failure); a resumed run makes them again."""
        for p in self._pending:
            p.tmp.unlink(missing_ok=True)
        self._pending = []

    def _fail(self, e: OSError, path: Path):
        self.discard_pending()
        hint = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder's permissions or disk"
        raise StoreError(f"Writing {path} failed ({e.strerror or e}); {len(self._listing)} image(s) are listed "
                         f"and intact. {hint.capitalize()}, then rerun to resume.") from e

    def merge(self) -> None:
        """Folds the journals of ranks > 0 into the manifest, drops them and rewrites the index. Run by one
        process (rank 0, whose listing is current) while no other writes, i.e. after a barrier."""
        listing = self._listing
        journals = self._journals()
        if journals:
            with open(self.metadata_path, "ab") as out:
                for path in journals:
                    for rec in _parse_lines(path, strict=False):
                        item_id = rec.get("item_id")
                        if item_id in listing or not (self.root / rec["file_name"]).is_file():
                            continue
                        listing[item_id] = self._row(item_id, rec["file_name"], rec.get("label_ids"))
                        out.write((json.dumps(rec) + "\n").encode())
                out.flush()
                os.fsync(out.fileno())
            for path in journals:
                path.unlink()
        self.write_index()

    # ---------------------------------------------------------------------------------------------- loading
    def load(self, *, mode: str = "RGB", ids: Iterable[str] | None = None) -> LabeledImages:
        """The labelled images of the set (unlabelled records are left out), in listing order, or in the
        order of ``ids`` when given (ids not listed are left out)."""
        listing = self._listing
        order = listing.keys() if ids is None else (i for i in ids if i in listing)
        rows = [(i, listing[i]) for i in order if listing[i][1] is not None]
        return LabeledImages(
            schema=self.schema,
            labels=np.asarray([lab for _, (_, lab) in rows], dtype=np.int64).reshape(len(rows), -1),
            ids=[i for i, _ in rows],
            paths=[self.root / (f or image_path(i)) for i, (f, _) in rows],
            mode=mode,
            origin=str(self.root),
        )


def _parse_lines(path: Path, *, strict: bool, torn: list[bool] | None = None) -> Iterable[dict]:
    """The JSON lines of ``path``. A line without its newline can only be the torn end of an interrupted append:
    it is skipped when incomplete (and noted in ``torn``, as is a complete one that lacks its newline). Another
    bad line is a :class:`StoreError` when ``strict``, else skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            ended = line.endswith(b"\n")
            if not ended and torn is not None:
                torn.append(True)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if strict and ended:
                    raise StoreError(f"{path} line {lineno} is not valid JSON; the manifest is damaged beyond a "
                                     "torn last line. Move it aside and regenerate.") from None
                continue
            yield rec


def _pack(strings: Iterable[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode(), dtype=np.uint8)


def _unpack(buf: np.ndarray) -> list[str]:
    text = buf.tobytes().decode()
    return text.split("\n") if text else []


def open_store(root: str | Path, **options) -> SyntheticStore:
    """Opens an existing store (its ``schema.json`` gives the label schema); ``options`` as
    :class:`SyntheticStore`'s."""
    root = Path(root)
    if not (root / "schema.json").is_file():
        raise StoreError(f"{root} is not a synthetic set (no schema.json); generate one with `synthaug generate`.")
    return SyntheticStore(root, LabelSchema.from_dict(read_json(root / "schema.json")), **options)
