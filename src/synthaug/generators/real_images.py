"""Real-image conditioning shared by the generators that condition on real training images (``mvc``,
``unclip-augcond``, ``ddpm`` with ``translate_from``): a record of the images in the generator's workdir,
per-class pools, source picking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.plan import PlanItem
from synthaug.utils import atomic_write, read_json, write_json
from synthaug.errors import SettingError, MissingFileError


def save_real_images(real: LabeledImages, folder: Path) -> None:
    """Records ``real`` under ``folder`` so a later process can reload it with :func:`load_real_images`.

    Per-image captions (``real.captions``), when the data has them, are recorded too. Images on disk are recorded by absolute path; in-memory images are written as PNG copies.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if real.paths is not None:
        files = [str(Path(p).resolve()) for p in real.paths]
    else:
        files = []
        for i in range(len(real)):
            name = f"images/{i:07d}.png"
            with atomic_write(folder / name, "wb") as f:
                real.image(i).save(f, format="PNG")
            files.append(name)  # relative: the workdir may move
    write_json(folder / "real.json", {"ids": list(real.ids), "labels": real.labels.tolist(), "files": files,
                                      "mode": real.mode, "origin": real.origin,
                                      "captions": getattr(real, "captions", None)})


def load_real_images(folder: Path, schema: LabelSchema) -> LabeledImages:
    """The images recorded by :func:`save_real_images`.

    Raises:
        FileNotFoundError: if nothing was recorded there (``fit`` has not run) or a recorded file is gone.
    """
    record = folder / "real.json"
    if not record.is_file():
        raise MissingFileError(f"No real images recorded in {folder} (looked for real.json); this generator "
                                "needs the real training images: run fit(real) first (`synthaug generate` "
                                "does).")
    d = read_json(record)
    paths = [folder / f if not Path(f).is_absolute() else Path(f) for f in d["files"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} real image(s) recorded in {record} are gone (e.g. "
                                f"{missing[:2]}); restore them or run fit again on the current data.")
    real = LabeledImages(schema=schema, labels=np.asarray(d["labels"], dtype=np.int64), ids=d["ids"],
                         paths=paths, mode=d.get("mode", "RGB"), origin=d.get("origin", ""))
    if d.get("captions") is not None:
        real.captions = d["captions"]
    return real


def class_pools(real: LabeledImages) -> dict[tuple[int, ...], np.ndarray]:
    """Indices of the real images of each label vector, in data order."""
    pools: dict[tuple[int, ...], list[int]] = {}
    for i, label in enumerate(map(tuple, real.labels.tolist())):
        pools.setdefault(label, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in pools.items()}


def pick_sources(
    item: PlanItem, real: LabeledImages, pools: dict[tuple[int, ...], np.ndarray], count: int,
    rng: np.random.Generator, *, any_class: bool = False, other_classes: bool = False,
) -> list[int]:
    """``count`` real images of the item's class (or, with ``other_classes``, of any other class): the item's own
    ``source_ids`` first, the rest at random.

    The random draw is made whether or not the item names its sources, so the draws after it (mixing
    weights, boxes, ...) do not depend on it: an item re-made from its manifest line (which names every
    source) gets the same ones.

    Args:
        any_class: draw an unlabelled item's sources from all real images (a class-agnostic condition);
            without it an unlabelled item is an error.

    Raises:
        ValueError: for an unlabelled item (unless ``any_class``), a class with no real image, or an unknown
            source id.
    """
    if item.labels is None and any_class:
        pool, what = np.arange(len(real), dtype=np.int64), "any class"
    elif item.labels is None:
        raise SettingError(f"Item {item.item_id!r} has no labels; this generator conditions on real images of "
                           "the item's class, so every plan item needs labels.")
    elif other_classes:
        pool = np.flatnonzero((real.labels != np.asarray(item.labels)).any(axis=1))
        what = f"a class other than {real.schema.names(item.labels)}"
        if not len(pool):
            raise SettingError(f"Item {item.item_id!r} asks for a source image of a class other than its own "
                               f"({real.schema.names(item.labels)}), but every real image given is of that class.")
    else:
        pool = pools.get(tuple(item.labels))
        if pool is None:
            raise SettingError(f"Item {item.item_id!r} asks for class {real.schema.names(item.labels)} but fit "
                               "was given no real image of it; add real images of that class or drop it from "
                               "the plan.")
        what = f"its class {real.schema.names(item.labels)}"
    # with replacement only when the pool has too few images (then an image may mix with itself)
    drawn = rng.choice(pool, size=count, replace=len(pool) < count).tolist() if count else []
    chosen = []
    for id_ in item.source_ids[:count]:
        i = next((int(i) for i in pool if real.ids[i] == id_), None)
        if i is None:
            raise SettingError(f"Item {item.item_id!r} names source id {id_!r}, which is not a real image of "
                               f"{what} given to fit.")
        chosen.append(i)
    return chosen + drawn[len(chosen):]


def image_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A PIL image as a float (C, H, W) tensor in [0, 1], resized to ``size`` (H, W) if given."""
    t = v2.functional.to_dtype(v2.functional.to_image(image.convert("RGB")), torch.float32, scale=True)
    return t if size is None else v2.functional.resize(t, list(size), antialias=True)
