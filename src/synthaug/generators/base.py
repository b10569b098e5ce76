"""The generator protocol, its registry, and the loop that fills a synthetic store.

A generator is registered by name with a typed (pydantic) config::

    @register_generator("ddpm")
    class DDPMGenerator(Generator):
        config_class = DDPMConfig

``fit`` is optional (pretrained pipelines need none); ``generate`` takes plan items and returns one PIL image
per item, in item order, each made from the item's own seed so the result does not depend on the batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.plan import PlanItem
from synthaug.generators.configs import GENERATORS, GeneratorConfig, generator_config  # noqa: F401
from synthaug.store import SyntheticStore
from synthaug.errors import SettingError

log = logging.getLogger(__name__)

class Generator:
    """Base class. Subclasses set ``name`` and ``config_class`` and implement ``generate``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig

    def __init__(
        self, config: GeneratorConfig, schema: LabelSchema, *, device: torch.device, workdir: Path, seed: int = 0,
    ):
        self.config = config
        self.schema = schema
        self.device = device
        self.workdir = Path(workdir)
        self.seed = seed  # seeds training randomness; sampling uses each item's own seed

    def fit(self, real: LabeledImages) -> None:
        """Trains or fine-tunes on the real training images; resumes from ``workdir`` when interrupted."""

    def is_fitted(self) -> bool:
        return True

    def generate(self, items: Sequence[PlanItem]) -> list[Image.Image]:
        raise NotImplementedError

    def annotate(self, items: Sequence[PlanItem], images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """Per-image manifest fields beyond the item's own (labels from a classifier, scores, ...)."""
        return [{} for _ in items]

    def provenance(self) -> dict[str, Any]:
        """Fields written into every manifest line: method, model/checkpoint, guidance, steps, ..."""
        return {"method": self.name}


def register_generator(name: str):
    def decorator(cls):
        cls.name = name
        return GENERATORS.register(name)(cls)

    return decorator


def create_generator(
    name: str, params: dict[str, Any] | GeneratorConfig | None, schema: LabelSchema, *,
    device: torch.device | str = "cpu", workdir: str | Path = ".", seed: int = 0,
) -> Generator:
    """Builds the generator registered as ``name`` (see ``synthaug list generators``)."""
    cls = GENERATORS.get(name)
    config = params if isinstance(params, GeneratorConfig) else generator_config(name, params)
    return cls(config, schema, device=torch.device(device), workdir=Path(workdir), seed=seed)


def fill_store(
    generator: Generator, items: Sequence[PlanItem], store: SyntheticStore, *, batch_size: int = 32,
    progress: bool = True, process_index: int = 0, num_processes: int = 1,
) -> int:
    """Generates the plan items the store does not hold yet and writes them; returns how many were made.

    Under ``accelerate launch`` pass the rank and world size: each rank takes a disjoint slice of the
    pending items, so the union equals the single-process result.
    """
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, but got {batch_size=}.")
    pending = store.attach_plan(items) if process_index == 0 else [
        it for it in items if it.item_id not in store.done_ids()]
    pending = list(pending)[process_index::num_processes]
    if not pending:
        return 0
    prov = generator.provenance()
    bar = tqdm(total=len(pending), desc=f"generate [{generator.name}]", unit="img", disable=not progress)
    for b in range(math.ceil(len(pending) / batch_size)):
        batch = pending[b * batch_size : (b + 1) * batch_size]
        images = generator.generate(batch)
        if len(images) != len(batch):
            raise RuntimeError(f"{generator.name} returned {len(images)} images for {len(batch)} items.")
        for item, image, extra in zip(batch, images, generator.annotate(batch, images)):
            store.write(item, image, {**prov, **extra})
        bar.update(len(batch))
    bar.close()
    return len(pending)
