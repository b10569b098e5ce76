"""The generator protocol, its registry, and the loop that fills a synthetic store.

A generator is registered by name with a typed (pydantic) config::

    @register_generator("ddpm")
    class DDPMGenerator(Generator):
        config_class = DDPMConfig

``fit`` is optional (pretrained pipelines need none); ``sample`` takes plan items and returns one
:class:`Generated` (image + its manifest fields) per item, in item order, each made from the item's own seed so
the result does not depend on the batch. ``generate`` is the same without the fields.

Every manifest line describes exactly how its image was made: the item (labels, seed, prompt, source ids),
the generator's :meth:`~Generator.provenance` (every sampling setting under its config name) and the image's
own fields. :meth:`Generator.item_from_record` turns a line back into the plan item that re-makes the image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
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

@dataclass(frozen=True)
class Generated:
    """One generated image and its own manifest fields (prompt used, real ids used, labels, scores, ...)."""

    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)


class Generator:
    """Base class. Subclasses set ``name`` and ``config_class`` and implement ``sample``.

    Class attributes:
        pseudo_control: what the pseudo-labelled control of this generator is, in a few words (the runner
            shows it in the results table), or None when the generator cannot make class-agnostic
            (unlabelled) samples; the runner then leaves the control arm out and logs why.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    pseudo_control: ClassVar[str | None] = None

    def __init__(
        self, config: GeneratorConfig, schema: LabelSchema, *, device: torch.device, workdir: Path, seed: int = 0,
        progress: bool = True,
    ):
        self.config = config
        self.schema = schema
        self.device = device
        self.workdir = Path(workdir)
        self.seed = seed  # seeds training randomness; sampling uses each item's own seed
        self.progress = progress  # show progress bars (training, captioning)

    def fit(self, real: LabeledImages) -> None:
        """Trains or fine-tunes on the real training images; resumes from ``workdir`` when interrupted."""

    def is_fitted(self) -> bool:
        return True

    def check_loadable(self) -> None:
        """Loads (and keeps) what ``sample`` will sample from, so a bad model path fails now, not mid-generation.

        Raises:
            MissingFileError, SettingError: naming the field and path at fault and the fix.
        """

    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        """One :class:`Generated` per item, in item order; each from the item's own seed."""
        raise NotImplementedError

    def generate(self, items: Sequence[PlanItem]) -> list[Image.Image]:
        """The images of :meth:`sample`, without their manifest fields."""
        return [g.image for g in self.sample(items)]

    def provenance(self) -> dict[str, Any]:
        """Fields written into every manifest line: the method and every sampling setting under its config
        name (subclasses add the model/checkpoint and resolved values such as the dtype)."""
        return {**self.config.sampling_part(), "method": self.name}

    def sampling_params(self, record: dict[str, Any]) -> dict[str, Any]:
        """The sampling settings a manifest line was made with, as config fields (``generator.params``):
        with the model's own settings they re-make the line's image from :meth:`item_from_record`."""
        return {k: record[k] for k in self.config.sampling_fields if k in record}

    def item_from_record(self, record: dict[str, Any]) -> PlanItem:
        """The plan item that re-makes the image of a manifest line (with this generator's model and the
        line's sampling settings): its labels, seed, prompt (``text``) and real source ids."""
        labels = record.get("label_ids")
        return PlanItem(record["item_id"], None if labels is None else tuple(labels), int(record["seed"]),
                        prompt=record.get("text"), source_ids=tuple(record.get("source_ids") or ()))


def register_generator(name: str):
    def decorator(cls):
        cls.name = name
        return GENERATORS.register(name)(cls)

    return decorator


def create_generator(
    name: str, params: dict[str, Any] | GeneratorConfig | None, schema: LabelSchema, *,
    device: torch.device | str = "cpu", workdir: str | Path = ".", seed: int = 0, progress: bool = True,
) -> Generator:
    """Builds the generator registered as ``name`` (see ``synthaug list generators``); ``progress`` shows its
    progress bars (training, captioning)."""
    cls = GENERATORS.get(name)
    config = params if isinstance(params, GeneratorConfig) else generator_config(name, params)
    return cls(config, schema, device=torch.device(device), workdir=Path(workdir), seed=seed, progress=progress)


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
        made = generator.sample(batch)
        if len(made) != len(batch):
            raise RuntimeError(f"{generator.name} returned {len(made)} images for {len(batch)} items.")
        for item, out in zip(batch, made):
            store.write(item, out.image, {**prov, **out.meta})
        bar.update(len(batch))
    bar.close()
    return len(pending)
