"""The synthetic set on disk: ``images/<item_id>.png`` plus ``metadata.jsonl``.

Loadable with ``datasets.load_dataset("imagefolder", data_dir=root)`` and usable as a training set by
diffusers' example scripts (``file_name`` + ``text`` columns).

Crash safety: an image is written to a temporary name, fsynced and renamed; only then is its manifest line
appended (one ``write`` + fsync). On re-open, a torn last line, listed-but-missing images, duplicate lines
and stray temporary files are repaired, so a resumed generation (even after ``kill -9``) ends with exactly
the planned items.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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


_SAFE_STEM = re.compile(r"[\w.+-]{1,120}")


def file_stem(item_id: str) -> str:
    """A file name stem for an item id: the id itself when it is a plain name (letters, digits, ``._+-``,
    not starting with a dot), else a slug plus a short hash, so a class name with ``/``, ``..`` or spaces
    never creates folders or escapes ``images/``."""
    if _SAFE_STEM.fullmatch(item_id) and not item_id.startswith("."):
        return item_id
    slug = re.sub(r"[^\w.+-]+", "_", item_id).strip("._")[:80]
    return f"{slug or 'item'}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


class SyntheticStore:
    """A synthetic image set rooted at ``root``.

    Args:
        root: the folder (created if needed).
        schema: the label schema; saved as ``schema.json`` and checked on re-open.
    """

    def __init__(self, root: str | Path, schema: LabelSchema):
        self.root = Path(root)
        self.schema = schema
        (self.root / IMAGES).mkdir(parents=True, exist_ok=True)
        schema_path = self.root / "schema.json"
        if schema_path.exists():
            saved = read_json(schema_path)
            if saved != schema.to_dict():
                raise StoreError(f"{schema_path} holds another label schema ({saved}); use another folder.")
        else:
            write_json(schema_path, schema.to_dict())
        self._records: dict[str, dict] = {}
        self._recover()

    # ---------------------------------------------------------------------------------------------- reading
    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    def records(self) -> list[dict]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def done_ids(self) -> set[str]:
        return set(self._records)

    def _recover(self) -> None:
        for tmp in (self.root / IMAGES).glob(".tmp-*"):
            tmp.unlink()
        if not self.metadata_path.exists():
            return
        raw = self.metadata_path.read_bytes()
        lines = raw.split(b"\n")
        dirty = not raw.endswith(b"\n") and raw != b""
        kept: dict[str, dict] = {}
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # torn last line from an interrupted append
                    dirty = True
                    continue
                raise StoreError(f"{self.metadata_path} line {lineno} is not valid JSON; the manifest is "
                                 "damaged beyond a torn last line. Move it aside and regenerate.") from None
            item_id = rec.get("item_id")
            if item_id in kept:
                dirty = True
                continue
            if not (self.root / rec["file_name"]).is_file():
                log.warning("%s lists %s but the image is missing; it will be regenerated.",
                            self.metadata_path, rec["file_name"])
                dirty = True
                continue
            kept[item_id] = rec
        self._records = kept
        if dirty:
            self._rewrite()

    def _rewrite(self) -> None:
        with atomic_write(self.metadata_path, "w") as f:
            for rec in self._records.values():
                f.write(json.dumps(rec) + "\n")

    # ---------------------------------------------------------------------------------------------- writing
    def attach_plan(self, items: Sequence[PlanItem]) -> list[PlanItem]:
        """Records the plan and returns the items still to generate, in plan order.

        A plan may grow between runs; an item whose labels or seed changed is an error, since its image
        on disk no longer matches it.
        """
        plan_path = self.root / "plan.jsonl"
        if plan_path.exists():
            old = {it.item_id: it for it in load_plan(plan_path)}
            changed = [it.item_id for it in items if it.item_id in old and old[it.item_id] != it]
            changed = [i for i in changed if i in self._records]
            if changed:
                raise StoreError(f"{self.root}: {len(changed)} item(s) already generated under another plan "
                                 f"(e.g. {changed[:3]}); their labels, prompt or seed changed. Use a new "
                                 "output folder, or delete this one to regenerate.")
        ids = [it.item_id for it in items]
        if len(set(ids)) != len(ids):
            raise StoreError("Plan item ids must be unique.")
        save_plan(items, plan_path)
        extra = set(self._records) - set(ids)
        if extra:
            log.warning("%s holds %d image(s) not in the current plan; they stay on disk but are not "
                        "listed in the plan.", self.root, len(extra))
        return [it for it in items if it.item_id not in self._records]

    def write(self, item: PlanItem, image: Image.Image, info: dict[str, Any] | None = None) -> dict:
        """Writes one image atomically, then appends its manifest line.

        ``info`` adds provenance fields (method, model, guidance, ...); a ``label_ids`` key in it overrides
        the item's labels (pseudo-labelling).
        """
        info = dict(info or {})
        label_ids = info.pop("label_ids", None)
        label_ids = list(item.labels) if label_ids is None and item.labels is not None else label_ids
        file_name = f"{IMAGES}/{file_stem(item.item_id)}.png"
        with atomic_write(self.root / file_name, "wb") as f:
            image.save(f, format="PNG")
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
        line = (json.dumps(rec) + "\n").encode()
        fd = os.open(self.metadata_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._records[item.item_id] = rec
        return rec

    # ---------------------------------------------------------------------------------------------- loading
    def load(self, *, mode: str = "RGB", ids: Iterable[str] | None = None) -> LabeledImages:
        """The labelled images of the set (unlabelled records are left out)."""
        recs = [r for r in self._records.values() if r.get("label_ids") is not None]
        if ids is not None:
            wanted = set(ids)
            recs = [r for r in recs if r["item_id"] in wanted]
        return LabeledImages(
            schema=self.schema,
            labels=np.asarray([r["label_ids"] for r in recs], dtype=np.int64).reshape(len(recs), -1),
            ids=[r["item_id"] for r in recs],
            paths=[self.root / r["file_name"] for r in recs],
            mode=mode,
            origin=str(self.root),
        )


def open_store(root: str | Path) -> SyntheticStore:
    """Opens an existing store (its ``schema.json`` gives the label schema)."""
    root = Path(root)
    if not (root / "schema.json").is_file():
        raise StoreError(f"{root} is not a synthetic set (no schema.json); generate one with `synthaug generate`.")
    return SyntheticStore(root, LabelSchema.from_dict(read_json(root / "schema.json")))
