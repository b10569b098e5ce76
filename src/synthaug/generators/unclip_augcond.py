"""``unclip-augcond``: augmentation-conditioned generation with Stable unCLIP.

Chen, Zhang & Romero-Soriano, "Augmented Conditioning Is Enough For Effective Training Image Generation",
2025 (arXiv:2502.04475). diffusers' ``StableUnCLIPImg2ImgPipeline`` (the study: stable-diffusion-2-1-unclip,
PNDM, 30 steps) is conditioned on the class-name prompt and on the CLIP image embedding of a real training
image of the item's class, augmented by one of ten methods (:mod:`synthaug.generators.augcond`): the
unchanged image ("random-image", the baseline), dropout on its embedding, or a Mixup / CutMix blend of two images of
the class, in pixel space or in embedding space, each with or without dropout.

``fit`` only records the real images (ids, labels, files) under ``workdir/real``; their CLIP image embeddings
are computed once, in batches, and cached beside them (``clip_image_embeds.safetensors``, read memory-mapped).
``sample`` picks and augments them per item, every draw from the item's seed, so an item gives the same
image whatever batch it is in; only pixel-space blends are encoded at sampling time, one batch per call.
The real image ids used are written to the manifest's ``source_ids``.

An unlabelled item (the pseudo-labelled control) is conditioned class-agnostically: its real images are drawn
from all classes and its prompt is the template with no label (empty for the default ``{attributes}``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import save

from synthaug.data.schema import LabeledImages
from synthaug.generators.augcond import (
    Method, cutmix, cutmix_embedding, embedding_dropout, mixup, parse_method, sample_lambda,
)
from synthaug.generators.configs import UnCLIPAugCondConfig
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.generators.real_images import class_pools, image_tensor, load_real_images, pick_sources, save_real_images
from synthaug.data.captions import captions_for_items, check_template
from synthaug.generators.sd_common import (
    Precision, SchedulerName, item_generators, load_pipeline, optimize_for_inference, set_scheduler,
)
from synthaug.imaging import to_pil
from synthaug.plan import PlanItem
from synthaug.utils import atomic_write, derive_seed
from synthaug.errors import SettingError

EMBED_BATCH = 64  # real images per CLIP encode when filling the embedding cache


def _metadata(path: Path) -> dict[str, str] | None:
    with safe_open(path, framework="pt") as f:
        return f.metadata()


# ------------------------------------------------------------------------------------ generator

@register_generator("unclip-augcond")
class UnCLIPAugCondGenerator(Generator):
    """Stable unCLIP conditioned on the class name and an augmented real image of the class."""

    config_class = UnCLIPAugCondConfig
    config: UnCLIPAugCondConfig
    pseudo_control = ("the same unCLIP pipeline conditioned on real images drawn from all classes with an empty "
                      "prompt, labelled by the real-only classifier")
    _pipe: DiffusionPipeline | None = None
    _real: LabeledImages | None = None
    _embeds = None  # safe_open handle of the cached real-image embeddings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_template(self.schema, self.config.prompt_template)
        self.recipe = parse_method(self.config.method)

    @property
    def real_dir(self) -> Path:
        return self.workdir / "real"

    @property
    def precision(self) -> Precision:
        if self.config.dtype == "auto":
            return "fp16" if self.device.type == "cuda" else "fp32"
        return self.config.dtype

    def fit(self, real: LabeledImages) -> None:
        """Records the real images to condition on (no training)."""
        if len(real) == 0:
            raise SettingError("unclip-augcond needs real training images to condition on, but got none.")
        save_real_images(real, self.real_dir)
        self._real = self._embeds = None

    def is_fitted(self) -> bool:
        return (self.real_dir / "real.json").is_file()

    def pipeline(self) -> DiffusionPipeline:
        """The loaded ``StableUnCLIPImg2ImgPipeline`` with the configured scheduler (loaded once)."""
        if self._pipe is None:
            c = self.config
            pipe = load_pipeline(c.model, device=self.device, pipeline="StableUnCLIPImg2ImgPipeline",
                                 dtype=self.precision, local_files_only=c.local_files_only)
            set_scheduler(pipe, c.scheduler)
            optimize_for_inference(pipe, channels_last=c.channels_last, compile=c.enable_compile)
            self._pipe = pipe
        return self._pipe

    def _real_images(self) -> tuple[LabeledImages, dict[tuple[int, ...], np.ndarray]]:
        if self._real is None:
            self._real = load_real_images(self.real_dir, self.schema)
            self._pools = class_pools(self._real)
        return self._real, self._pools

    @torch.no_grad()
    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        """CLIP image embeddings (n, d), as the pipeline computes them for an ``image=`` input."""
        pipe = self.pipeline()
        pixels = pipe.feature_extractor(images=images, return_tensors="pt").pixel_values
        encoder = pipe.image_encoder
        return encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds.float()

    @property
    def embeds_path(self) -> Path:
        return self.real_dir / "clip_image_embeds.safetensors"

    def real_embeddings(self):
        """The CLIP image embedding of every recorded real image, computed once (in batches of
        ``EMBED_BATCH``) and cached in ``workdir/real/clip_image_embeds.safetensors``; returned as an open
        ``safe_open`` handle (memory-mapped: rows are read when used). The cache names the model, dtype and
        real images it was made from and is remade when one of them changed."""
        if self._embeds is None:
            real, _ = self._real_images()
            key = {"model": self.config.model, "dtype": self.precision,
                   "real": hashlib.sha256("\n".join(real.ids).encode()).hexdigest()}
            if not self.embeds_path.is_file() or _metadata(self.embeds_path) != key:
                rows = [self._encode([real.image(i) for i in range(b, min(b + EMBED_BATCH, len(real)))])
                        for b in range(0, len(real), EMBED_BATCH)]
                data = save({"embeds": torch.cat(rows).contiguous()}, metadata=key)
                with atomic_write(self.embeds_path, "wb") as f:
                    f.write(data)
            self._embeds = safe_open(self.embeds_path, framework="pt")
        return self._embeds

    def _real_embedding(self, i: int) -> torch.Tensor:
        return self.real_embeddings().get_slice("embeds")[i : i + 1][0].float()

    def condition(self, item: PlanItem) -> tuple[torch.Tensor, dict[str, Any]]:
        """The augmented image embedding (d,) for one item, and what went into it (for the manifest)."""
        return self.conditions([item])[0]

    def conditions(self, items: Sequence[PlanItem]) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """The augmented image embedding (d,) of each item, and what went into it (for the manifest).

        Every random choice (images, λ, box, dropout mask) comes from the item's own seed. Real images come
        from the cached embeddings (:meth:`real_embeddings`); only pixel-space blends are encoded, in one
        batch for all items.
        """
        c, recipe = self.config, self.recipe
        real, pools = self._real_images()
        draws = []
        for item in items:
            rng = np.random.default_rng(derive_seed(item.seed, "unclip-augcond"))
            idx = pick_sources(item, real, pools, recipe.num_images, rng, any_class=True)
            info: dict[str, Any] = {"source_ids": [real.ids[i] for i in idx]}
            blended = None
            if recipe.blend is not None:
                info["mix_lambda"] = sample_lambda(c.mix_alpha, rng)
            if recipe.blend is not None and recipe.space == "pixel":  # 1. blend the pixels (second resized to first)
                first = image_tensor(real.image(idx[0]))
                second = image_tensor(real.image(idx[1]), tuple(first.shape[-2:]))
                if recipe.blend == "mixup":
                    blended = to_pil(mixup(first, second, info["mix_lambda"])[None])[0]
                else:
                    pixels, info["mix_lambda"] = cutmix(first, second, info["mix_lambda"], rng)
                    blended = to_pil(pixels[None])[0]
            draws.append((rng, idx, info, blended))
        pixel_blends = [blended for *_, blended in draws if blended is not None]
        encoded = iter(self._encode(pixel_blends)) if pixel_blends else iter(())  # 2. one batch of encodes
        out = []
        for rng, idx, info, blended in draws:
            if blended is not None:
                embedding = next(encoded)
            elif recipe.blend is None:  # 3a. one real image: the baseline (and "dropout")
                embedding = self._real_embedding(idx[0])
            else:  # 3b. blend the two cached embeddings
                first, second = self._real_embedding(idx[0]), self._real_embedding(idx[1])
                if recipe.blend == "mixup":
                    embedding = mixup(first, second, info["mix_lambda"])
                else:
                    embedding, info["mix_lambda"] = cutmix_embedding(first, second, info["mix_lambda"], rng)
            if recipe.dropout:  # 4. dropout on the final embedding
                embedding = embedding_dropout(embedding, c.dropout_p, rng, rescale=c.dropout_rescale)
            out.append((embedding, info))
        return out

    def check_loadable(self) -> None:
        """Loads the pipeline and, once fitted, fills the real-image embedding cache (so that ranks started
        after this one find it made)."""
        self.pipeline()
        if self.is_fitted():
            self.real_embeddings()

    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        """One image per item, in item order, with its prompt (``text``), the real image ids used
        (``source_ids``) and the blend's weight λ (``mix_lambda``), if any.

        Raises:
            FileNotFoundError: if fit has not recorded real images, or the checkpoint cannot be loaded.
            ValueError: if an item's class has no real image.
        """
        if not items:
            return []
        c = self.config
        pipe = self.pipeline()
        conditions = self.conditions(items)
        prompts = captions_for_items(self.schema, items, c.prompt_template)
        embeds = torch.stack([e for e, _ in conditions]).to(self.device, pipe.image_encoder.dtype)
        out = pipe(
            prompt=prompts, image_embeds=embeds, guidance_scale=c.guidance_scale, noise_level=c.noise_level,
            num_inference_steps=c.num_inference_steps, height=c.height, width=c.width,
            generator=item_generators(items), output_type="pil",
        )
        return [Generated(image, {"text": prompt, **info})
                for image, prompt, (_, info) in zip(out.images, prompts, conditions)]

    def provenance(self) -> dict[str, Any]:
        """Every sampling setting under its config name, except ``method`` (the manifest's generator name),
        recorded as ``augmentation``."""
        c = self.config
        return {**super().provenance(), "augmentation": c.method, "model": c.model, "dtype": self.precision}

    def sampling_params(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**super().sampling_params(record), "method": record["augmentation"]}
