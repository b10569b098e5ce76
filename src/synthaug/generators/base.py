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
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.plan import PlanItem
from synthaug.generators.configs import GENERATORS, GeneratorConfig, generator_config  # noqa: F401
from synthaug.store import StoreError, SyntheticStore
from synthaug.errors import SettingError
from synthaug.processes import Processes

if TYPE_CHECKING:
    from accelerate import PartialState

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
        distributed_fit: True when every process of an ``accelerate launch`` must call ``fit`` (it trains
            data-parallel, see :mod:`~synthaug.generators.diffusion_training`); else the main process fits alone
            while the others wait.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    pseudo_control: ClassVar[str | None] = None
    distributed_fit: ClassVar[bool] = False

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

    real: LabeledImages | None = None  # the real training images, for generators that sample from them

    def fit(self, real: LabeledImages) -> None:
        """Trains or fine-tunes on the real training images; resumes from ``workdir`` when interrupted."""

    def use_real(self, real: LabeledImages) -> None:
        """Hands over the real training images for sampling (e.g. ``ddpm``'s ``translate_from``) to a generator
        whose ``fit`` did not run in this process (fitted earlier, or on another rank); the experiment does."""
        self.real = real

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


def plan_slice(items: Sequence[PlanItem], process_index: int, num_processes: int) -> list[PlanItem]:
    """Process ``process_index``'s share of the plan: every ``num_processes``-th item. Fixed by the plan alone,
    so the slices are disjoint and cover the plan whatever each process finds done when it starts."""
    return list(items[process_index::num_processes])


def fill_store(
    generator: Generator, items: Sequence[PlanItem], store: SyntheticStore, *, batch_size: int = 32,
    progress: bool = True, processes: Processes | PartialState | None = None,
) -> int:
    """Generates the plan items the store does not hold yet and writes them; returns how many this process made.

    Under ``accelerate launch`` pass the process group (:class:`~synthaug.processes.Processes`, or accelerate's
    ``PartialState()``; None: this process alone): rank 0 alone repairs the store and records the plan while
    the others wait; then each rank makes the missing items of its own slice of the plan (:func:`plan_slice`)
    and appends to its own journal; after a barrier rank 0 folds the journals into the manifest. The union
    equals the single-process result item for item (per-item seeds). Every process must call this (it holds
    barriers). The store must have been opened by no process yet.
    """
    if batch_size < 1:
        raise SettingError(f"batch_size must be >= 1, but got {batch_size=}.")
    processes = Processes.of(processes)
    rank, world = processes.index, processes.count
    store.rank = rank
    if rank == 0:  # exclusive: the others wait at the barrier below
        store.open(repair=True)
        store.remove_temporaries()
        store.attach_plan(items)
    if world > 1:
        processes.barrier()
        if rank != 0:
            store.open(repair=False)
    pending = [it for it in plan_slice(items, rank, world) if it.item_id not in store]
    try:
        _generate_into(generator, pending, store, batch_size=batch_size, progress=progress)
    except StoreError:
        raise  # the disk refused a write: the store dropped its unlisted images
    except BaseException:
        store.flush()  # interrupted or failed: keep the finished images of the open batch
        raise
    if world > 1:
        processes.barrier()
        if rank == 0:
            store.merge()
        processes.barrier()
        if rank != 0:
            store.open(repair=False)
    else:
        store.write_index()
    return len(pending)


def _generate_into(generator: Generator, pending: Sequence[PlanItem], store: SyntheticStore, *, batch_size: int,
                   progress: bool) -> None:
    if not pending:
        return
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
    store.flush()
    bar.close()
