"""``class-map``: a pretrained class-conditional diffusion model whose classes are not the data's, reached
through ``class_map`` ({data class: [model class ids or names]}).

Study 003 (§3.3.1, Table 3) made CIFAR-10 trucks and ships with an ImageNet class-conditional model by mapping
each coarse CIFAR class to fine ImageNet classes (fire engine, garbage truck, tow truck, ...; container ship,
pirate ship). Here the model is a diffusers ``DiTPipeline`` (a DiT transformer in the latent space of a VAE,
1,000 ImageNet classes and a null class for guidance, names from its ``model_index.json`` ``id2label``) or a
pipeline of a ``UNet2DModel`` with ``num_class_embeds`` and a scheduler (pixel space, no null class), named by
local folder or hub id. Nothing is trained.

Each plan item draws one model class of its data class's entries from its own seed, and its noise from a
generator seeded with that seed, so an item gives the same image whatever the batch, process or resume point.
The manifest line names the model and the model class drawn. Images are resized (centre-cropped to the aspect)
to the real training images' size and converted to their mode (L or RGB).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageOps

from synthaug.config_hints import closest
from synthaug.data.images import convert_image
from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.generators.configs import ClassMapConfig
from synthaug.generators.ddpm import guided_noise
from synthaug.generators.sd_common import (
    Precision, item_generators, load_pipeline, resolve_checkpoint, set_scheduler,
)
from synthaug.imaging import to_pil
from synthaug.plan import PlanItem
from synthaug.utils import derive_seed

FIELD = "generator.params"
DIT_GUIDANCE = 4.0  # DiTPipeline's default guidance scale


@dataclass(frozen=True)
class ClassConditionalModel:
    """What class-map samples from, read off a loaded pipeline.

    Attributes:
        pipe: the pipeline (its ``transformer`` or ``unet``, ``vae`` for latent models, and ``scheduler``).
        num_classes: model class ids are ``0 .. num_classes - 1``.
        null_class: the class id of the unconditional prediction (DiT's 1000), or None when there is none.
        id2label: the model's class names by id (empty when it has none).
    """

    pipe: DiffusionPipeline
    num_classes: int
    null_class: int | None
    id2label: dict[int, str]

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer if self.null_class is not None else self.pipe.unet

    @property
    def latent_vae(self) -> torch.nn.Module | None:
        return getattr(self.pipe, "vae", None)

    @property
    def native_size(self) -> int:
        """The side of the images the model makes before resizing."""
        side = self.denoiser.config.sample_size
        vae = self.latent_vae
        return side if vae is None else side * 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def native_mode(self) -> str:
        channels = (self.latent_vae or self.denoiser).config.out_channels
        return "L" if channels == 1 else "RGB"


def class_conditional(pipe: DiffusionPipeline, *, model: str) -> ClassConditionalModel:
    """The class-conditional model in ``pipe``: a DiT transformer (``num_embeds_ada_norm`` classes plus the
    null class) with a VAE, or a ``UNet2DModel`` with ``num_class_embeds``.

    Raises:
        SettingError: a pipeline of another kind (text-to-image, unconditional), naming what is needed.
    """
    transformer, unet = getattr(pipe, "transformer", None), getattr(pipe, "unet", None)
    names = class_names_by_id(_raw_id2label(pipe))
    if transformer is not None and getattr(pipe, "vae", None) is not None \
            and transformer.config.get("num_embeds_ada_norm"):
        num = int(transformer.config.num_embeds_ada_norm)
        return ClassConditionalModel(pipe, num, num, names)
    if unet is not None and isinstance(unet, UNet2DModel) and unet.config.get("num_class_embeds"):
        return ClassConditionalModel(pipe, int(unet.config.num_class_embeds), None, names)
    raise SettingError(
        f"{FIELD}.model={model!r} is a {type(pipe).__name__}, which class-map cannot condition on a class "
        "id. Give a class-conditional pipeline: a DiTPipeline (transformer/, vae/, scheduler/; e.g. "
        "'facebook/DiT-XL-2-256') or a UNet2DModel with num_class_embeds plus a scheduler (e.g. a "
        "DDPMPipeline folder saved with `save_pretrained`).")


def _raw_id2label(pipe: DiffusionPipeline) -> dict | None:
    """``id2label`` of the pipeline's ``model_index.json`` (DiTPipeline takes it but does not keep it in its
    config); None when the file has none."""
    return DiffusionPipeline.load_config(pipe.config._name_or_path, local_files_only=True).get("id2label")


def class_names_by_id(id2label: dict | None) -> dict[int, str]:
    """``{id: label}`` from an ``id2label`` mapping (JSON keys are strings)."""
    return {int(k): str(v) for k, v in (id2label or {}).items()}


def name_index(id2label: dict[int, str]) -> dict[str, int]:
    """Every name a class id answers to: its whole label and each comma-separated part, as DiTPipeline's
    ``labels`` ("tench, Tinca tinca" -> "tench", "Tinca tinca")."""
    out: dict[str, int] = {}
    for i, label in id2label.items():
        out[label.strip()] = i
        out.update({part.strip(): i for part in label.split(",") if part.strip()})
    return out


def resolve_class_map(class_map: dict[str, list[int | str]], classes: Sequence[str],
                      model: ClassConditionalModel, *, model_name: str) -> dict[int, tuple[int, ...]]:
    """``class_map`` as {data class index: model class ids}, names looked up in the model's ``id2label``.

    Raises:
        SettingError: a key that is not a data class, a name the model does not have, an id out of range;
            each names the value, the valid choices and the closest one.
    """
    check_class_map_keys(class_map, classes)
    names = name_index(model.id2label)
    out: dict[int, tuple[int, ...]] = {}
    for key, entries in class_map.items():
        ids = [_model_class_id(entry, key, names, model, model_name) for entry in entries]
        out[list(classes).index(key)] = tuple(dict.fromkeys(ids))
    return out


def check_class_map_keys(class_map: dict[str, list[int | str]], classes: Sequence[str]) -> None:
    """Every key of ``class_map`` is a data class with at least one model class.

    Raises:
        SettingError: naming the key, the closest data class and the data's classes.
    """
    for key, entries in class_map.items():
        if key not in classes:
            close = closest(key, classes)
            shown = f"{list(classes)[:20]}{' ...' if len(classes) > 20 else ''}"
            hint = f"; did you mean {close!r}?" if close else "."
            raise SettingError(f"{FIELD}.class_map has key {key!r}, which is not a class of the data{hint} "
                               f"The data's classes: {shown}.")
        if not entries:
            raise SettingError(f"{FIELD}.class_map[{key!r}] is empty; list the model class ids or names to "
                               f"draw {key!r} from, or remove the key.")


def _model_class_id(entry: int | str, key: str, names: dict[str, int], model: ClassConditionalModel,
                    model_name: str) -> int:
    where = f"{FIELD}.class_map[{key!r}] has {entry!r}"
    if isinstance(entry, int):
        if not 0 <= entry < model.num_classes:
            raise SettingError(f"{where}, but {FIELD}.model={model_name!r} has class ids "
                               f"0..{model.num_classes - 1}.")
        return entry
    if entry in names:
        return names[entry]
    if not names:
        raise SettingError(f"{where}, a class name, but {FIELD}.model={model_name!r} has no class names (its "
                           f"model_index.json has no id2label); give class ids 0..{model.num_classes - 1}.")
    close = closest(entry, names)
    hint = f"did you mean {close!r} (id {names[close]})?" if close else f"e.g. {sorted(names)[:5]}"
    raise SettingError(f"{where}, which is not a class name of {FIELD}.model={model_name!r}; {hint} Its "
                       f"{len(names)} names are the id2label of its model_index.json (or give an id "
                       f"0..{model.num_classes - 1}).")


def draw_model_class(item: PlanItem, ids: Sequence[int]) -> int:
    """One of ``ids`` for ``item``, drawn from the item's own seed (not a shared random state)."""
    return int(ids[np.random.default_rng(derive_seed(item.seed, "class-map")).integers(len(ids))])


@register_generator("class-map")
class ClassMapGenerator(Generator):
    """Generates each item's class with a pretrained class-conditional model through ``class_map``."""

    config_class = ClassMapConfig
    config: ClassMapConfig
    pseudo_control = ("samples of the same model from a model class drawn among all of class_map's entries "
                      "(whatever data class it maps), labelled by the real-only classifier")
    _model: ClassConditionalModel | None = None
    _pools: dict[int, tuple[int, ...]] | None = None
    _real_size: tuple[int, int] | None = None  # (width, height) of the real images
    _real_mode: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.schema.is_single_label:
            raise SettingError(f"class-map maps the classes of single-label data, but this data has "
                               f"{len(self.schema.groups)} label groups.")
        check_class_map_keys(self.config.class_map, self.classes)
        size = self.config.image_size
        if size is not None and min((size,) if isinstance(size, int) else size) < 1:
            raise SettingError(f"{FIELD}.image_size must be >= 1, but got {size!r}.")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.groups[0].classes

    @property
    def precision(self) -> Precision:
        """``dtype``, or for "auto" fp16 on CUDA and fp32 elsewhere (sampling only: no loss scaling)."""
        if self.config.dtype == "auto":
            return "fp16" if self.device.type == "cuda" else "fp32"
        return self.config.dtype

    def use_real(self, real: LabeledImages) -> None:
        """Keeps the real images' size (of the first) and mode, which the generated images are given."""
        super().use_real(real)
        if len(real):
            self._real_size, self._real_mode = real.image(0).size, real.mode

    # ---------------------------------------------------------------------------------------------- the model
    def model(self) -> ClassConditionalModel:
        """The loaded model with the configured scheduler and ``class_map`` resolved (loaded once).

        Raises:
            MissingFileError: a model folder or hub id that cannot be loaded, naming it and the fix.
            SettingError: a model that is not class-conditional, or a bad ``class_map`` entry.
        """
        if self._model is None:
            c = self.config
            resolve_checkpoint(c.model, field=f"{FIELD}.model", pipeline="DiTPipeline")  # names DiT's layout
            pipe = load_pipeline(c.model, device=self.device, pipeline=DiffusionPipeline,
                                 dtype=self.precision, local_files_only=c.local_files_only,
                                 field=f"{FIELD}.model")
            set_scheduler(pipe, c.scheduler)
            model = class_conditional(pipe, model=c.model)
            if model.null_class is None and self.guidance_scale(model) != 1.0:
                raise SettingError(f"{FIELD}.guidance_scale={c.guidance_scale} needs a null class, but the "
                                   f"UNet2DModel of {FIELD}.model={c.model!r} has none; leave guidance_scale "
                                   "unset (or 1) for plain conditional sampling.")
            self._pools = resolve_class_map(c.class_map, self.classes, model, model_name=c.model)
            self._model = model
        return self._model

    def check_loadable(self) -> None:
        self.model()
        if not self.config.class_map:
            raise SettingError(f"{FIELD}.class_map is empty; map each data class to generate to model class "
                               f"ids or names, e.g. class_map: {{{self.classes[0]!r}: [0]}}. The data's "
                               f"classes: {list(self.classes)[:20]}.")

    def guidance_scale(self, model: ClassConditionalModel | None = None) -> float:
        """``guidance_scale``, or the model's default when unset: DiT's 4.0, plain conditional (1) else."""
        if self.config.guidance_scale is not None:
            return self.config.guidance_scale
        model = model or self.model()
        return DIT_GUIDANCE if model.null_class is not None else 1.0

    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images: ``image_size``, else the real images', else the model's own."""
        size = self.config.image_size
        if size is None:
            return self._real_size or (self.model().native_size,) * 2
        return (size, size) if isinstance(size, int) else (size[1], size[0])

    def output_mode(self) -> str:
        if self.config.image_mode != "auto":
            return self.config.image_mode
        return self._real_mode or self.model().native_mode

    # ---------------------------------------------------------------------------------------------- sampling
    def model_classes(self, items: Sequence[PlanItem]) -> list[int]:
        """The model class of each item, drawn from its class's ``class_map`` entries (all entries for an
        unlabelled item) with the item's seed.

        Raises:
            SettingError: items of data classes that ``class_map`` does not map, naming them.
        """
        self.model()
        pools = self._pools
        unmapped = sorted({self.classes[it.labels[0]] for it in items
                           if it.labels is not None and it.labels[0] not in pools})
        if unmapped or not pools:
            missing = [c for c in self.classes if self.classes.index(c) not in pools]
            raise SettingError(
                f"The plan asks for class(es) {unmapped or missing} but {FIELD}.class_map maps only "
                f"{sorted(self.config.class_map)}; add model class ids or names for them to class_map, or "
                f"leave them out of the plan (plan.counts). Unmapped: {missing[:20]}.")
        everything = tuple(dict.fromkeys(i for ids in pools.values() for i in ids))
        return [draw_model_class(it, everything if it.labels is None else pools[it.labels[0]])
                for it in items]

    @torch.no_grad()
    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        """One image per item, in item order: the item's model class (from its seed) denoised from noise
        drawn from a generator seeded with the item's seed; ``meta`` names the model class.

        Raises:
            SettingError: an item's class is not in ``class_map``.
            MissingFileError: the model cannot be loaded (see :meth:`model`).
        """
        if not items:
            return []
        model, ids = self.model(), self.model_classes(items)
        pixels = self._denoise(model, torch.tensor(ids, device=self.device), item_generators(items))
        size, mode = self.output_size(), self.output_mode()
        return [Generated(self._finish(image, size, mode),
                          {"model_class_id": i, "model_class": model.id2label.get(i)})
                for image, i in zip(to_pil(pixels), ids)]

    def _denoise(self, model: ClassConditionalModel, labels: torch.Tensor,
                 generators: list[torch.Generator]) -> torch.Tensor:
        """Images in [0, 1] for ``labels``, in the scheduler's loop (as diffusers' ``DiTPipeline``), each
        item's noise from its own generator."""
        pipe, denoiser = model.pipe, model.denoiser
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # fresh state per batch
        scheduler.set_timesteps(self.config.sampling_steps, device=self.device)
        side, channels = denoiser.config.sample_size, denoiser.config.in_channels
        # 1. per-item CPU generators: the same item gives the same image whatever the batch and device
        x = randn_tensor((len(labels), channels, side, side), generator=generators, device=self.device,
                         dtype=denoiser.dtype) * scheduler.init_noise_sigma
        stochastic = "generator" in inspect.signature(scheduler.step).parameters
        step_kw = {"generator": generators} if stochastic else {}
        guidance = self.guidance_scale(model)
        for t in scheduler.timesteps:
            # 2. classifier-free guidance against the null class: ε = ε_∅ + w (ε_y − ε_∅)
            eps = self._predict(model, scheduler.scale_model_input(x, t), t, labels, guidance)
            x = scheduler.step(eps, t, x, **step_kw).prev_sample  # 3. sampler noise: the items' generators
        if model.latent_vae is not None:  # 4. latents -> pixels
            x = model.latent_vae.decode(x / model.latent_vae.config.scaling_factor).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def _predict(model: ClassConditionalModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                 guidance: float) -> torch.Tensor:
        guided = model.null_class is not None and guidance != 1.0
        if guided:
            x, labels = torch.cat([x, x]), torch.cat([labels, torch.full_like(labels, model.null_class)])
        if model.null_class is not None:  # DiT: a timestep per row; learned variance after the noise channels
            out = model.denoiser(x, timestep=t.expand(len(x)), class_labels=labels).sample[:, :x.shape[1]]
        else:
            out = model.denoiser(x, t, class_labels=labels).sample
        return guided_noise(*out.chunk(2), guidance) if guided else out

    @staticmethod
    def _finish(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
        """``image`` centre-cropped to the aspect of ``size`` (width, height), resized to it, in ``mode``."""
        if image.size != size:
            image = ImageOps.fit(image, size, Image.Resampling.BICUBIC)
        return convert_image(image, mode)

    def provenance(self) -> dict[str, Any]:
        c, (width, height) = self.config, self.output_size()
        return {**super().provenance(), "model": c.model, "pipeline": type(self.model().pipe).__name__,
                "guidance_scale": self.guidance_scale(), "dtype": self.precision,
                "image_size": width if width == height else [height, width], "image_mode": self.output_mode()}
