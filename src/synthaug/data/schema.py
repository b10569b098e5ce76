"""Label schemas and labelled image collections.

A :class:`LabelSchema` is a list of groups, each a list of class names. Single-label data is one group;
multi-attribute data (pattern, sleeve length, ...) has one group per attribute. A label is a vector of
class indices, one per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from synthaug.data.images import convert_image, open_image
from synthaug.errors import SettingError


@dataclass(frozen=True)
class LabelGroup:
    name: str
    classes: tuple[str, ...]

    def __post_init__(self):
        if not self.classes:
            raise SettingError(f"Label group {self.name!r} has no classes.")
        if len(set(self.classes)) != len(self.classes):
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise SettingError(f"Label group {self.name!r} repeats class names: {dupes}.")

    def index(self, class_name: str) -> int:
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise KeyError(
                f"Unknown label {class_name!r} for group {self.name!r}; known: {list(self.classes)}."
            ) from None


@dataclass(frozen=True)
class LabelSchema:
    groups: tuple[LabelGroup, ...]

    @classmethod
    def single(cls, classes: Sequence[str], name: str = "label") -> "LabelSchema":
        return cls((LabelGroup(name, tuple(str(c) for c in classes)),))

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[str]]) -> "LabelSchema":
        return cls(tuple(LabelGroup(k, tuple(str(c) for c in v)) for k, v in d.items()))

    def to_dict(self) -> dict[str, list[str]]:
        return {g.name: list(g.classes) for g in self.groups}

    @property
    def group_sizes(self) -> list[int]:
        return [len(g.classes) for g in self.groups]

    @property
    def num_outputs(self) -> int:
        return sum(self.group_sizes)

    @property
    def is_single_label(self) -> bool:
        return len(self.groups) == 1

    def names(self, label: Sequence[int]) -> dict[str, str]:
        """``{group: class name}`` for a label vector."""
        return {g.name: g.classes[int(i)] for g, i in zip(self.groups, label)}

    def class_key(self, group: int, index: int) -> str:
        """A readable key for one class: its name for single-label data, ``group=name`` otherwise."""
        g = self.groups[group]
        return g.classes[index] if self.is_single_label else f"{g.name}={g.classes[index]}"


@dataclass
class LabeledImages:
    """Images with label vectors, held either as an in-memory uint8 array or as file paths.

    Attributes:
        schema: the label schema.
        labels: int64 array (N, num_groups).
        ids: a stable string id per image (file path relative to the data root, or ``source:index``).
        pixels: uint8 array (N, H, W) or (N, H, W, C); or an object array (N,) of callables that each decode one
            image on demand (``LabeledImages.image`` calls it), e.g. rows of an Arrow-backed dataset column; or
            None when images live on disk.
        paths: image file paths, or None when ``pixels`` is given.
        mode: PIL mode images are converted to ("L" or "RGB").
        skipped: descriptions of bad images left out when the set was read (kept through ``subset``).
        captions: an optional caption per image (e.g. a manifest's ``data.caption_column``), or None.
        targets: optional soft training targets, float32 (N, Σ C_g), each group's slice summing to 1 (e.g. Diff-Mix
            labels of translated images: :func:`synthaug.train.data.attach_translation_targets`); None: the
            one-hot of ``labels``. Training uses them only when its config asks (``train.translation_labels``).
    """

    schema: LabelSchema
    labels: np.ndarray
    ids: list[str]
    pixels: np.ndarray | None = None
    paths: list[Path] | None = None
    mode: str = "RGB"
    origin: str = ""
    skipped: list[str] = field(default_factory=list)
    captions: list[str] | None = None
    targets: np.ndarray | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(len(self.ids), len(self.schema.groups))
        if (self.pixels is None) == (self.paths is None):
            raise SettingError("LabeledImages needs exactly one of pixels or paths.")
        if self.captions is not None and len(self.captions) != len(self.ids):
            raise SettingError(f"LabeledImages got {len(self.captions)} captions for {len(self.ids)} images.")
        if self.targets is not None:
            self.targets = np.asarray(self.targets, dtype=np.float32)
            if self.targets.shape != (len(self.ids), self.schema.num_outputs):
                raise SettingError(f"LabeledImages got soft targets of shape {self.targets.shape} for {len(self.ids)} "
                                   f"images of {self.schema.num_outputs} classes (all groups); expected "
                                   f"{(len(self.ids), self.schema.num_outputs)}.")

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` in :attr:`mode` (files decoded upright, 16-bit and transparent ones converted; see
        :mod:`synthaug.data.images`)."""
        if self.pixels is not None:
            item = self.pixels[i]
            return convert_image(item() if callable(item) else Image.fromarray(item), self.mode)
        return open_image(self.paths[i], self.mode)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabeledImages":
        idx = np.asarray(indices, dtype=np.int64)
        return LabeledImages(
            schema=self.schema,
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            pixels=None if self.pixels is None else self.pixels[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            mode=self.mode,
            origin=self.origin,
            skipped=list(self.skipped),
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            targets=None if self.targets is None else self.targets[idx],
        )

    def class_counts(self, group: int = 0) -> np.ndarray:
        return np.bincount(self.labels[:, group], minlength=len(self.schema.groups[group].classes))
