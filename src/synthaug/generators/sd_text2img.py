"""``sd-text2img``: a pretrained text-to-image diffusion pipeline prompted with captions made from labels.

Any diffusers text-to-image checkpoint works (SD 1.x, 2.x, SDXL, ...), named by local folder or hub id. The
prompt of each plan item is its own ``prompt`` if set, else its labels through a template
(:mod:`synthaug.data.captions`): "a photo of a {class}" for single-label data, the DeepFashion study's
"A person wearing {attributes} clothes" for attribute data. Each item's noise comes from its own seeded
generator, so an item gives the same image whatever batch it is in. An unlabelled item (the pseudo-labelled
control) is prompted with the empty prompt, with the same guidance and negative prompt.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from diffusers import DiffusionPipeline
from PIL import Image
from pydantic import Field

from synthaug.generators.configs import SDText2ImgConfig
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.data.captions import captions_for_items, check_template, default_template
from synthaug.generators.sd_common import (
    Precision, SchedulerName, item_generators, load_pipeline, optimize_for_inference, set_scheduler,
)
from synthaug.plan import PlanItem




@register_generator("sd-text2img")
class SDText2ImgGenerator(Generator):
    """Generates each plan item with a pretrained text-to-image pipeline prompted from its labels."""

    config_class = SDText2ImgConfig
    config: SDText2ImgConfig
    pseudo_control = ("samples of the same pipeline from the empty prompt (same guidance and negative prompt), "
                      "labelled by the real-only classifier")
    _pipe: DiffusionPipeline | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.prompt_template is not None:
            check_template(self.schema, self.config.prompt_template)

    @property
    def prompt_template(self) -> str:
        return self.config.prompt_template or default_template(self.schema)

    @property
    def precision(self) -> Precision:
        """The weights' dtype: ``dtype``, or for "auto" fp16 on CUDA and fp32 elsewhere (sampling only, so no
        loss scaling is involved; fp16 is the usual inference dtype of Stable Diffusion on GPUs)."""
        if self.config.dtype == "auto":
            return "fp16" if self.device.type == "cuda" else "fp32"
        return self.config.dtype

    def _load_pipeline(self) -> DiffusionPipeline:
        """The pipeline to sample from; subclasses add fine-tuned weights here."""
        c = self.config
        return load_pipeline(c.model, device=self.device, pipeline=c.pipeline, dtype=self.precision,
                             local_files_only=c.local_files_only)

    def pipeline(self) -> DiffusionPipeline:
        """The loaded pipeline with the configured scheduler and speed-ups (loaded once)."""
        if self._pipe is None:
            pipe = self._load_pipeline()
            set_scheduler(pipe, self.config.scheduler)
            optimize_for_inference(pipe, channels_last=self.config.channels_last,
                                   compile=self.config.enable_compile)
            self._pipe = pipe
        return self._pipe

    def prompts(self, items: Sequence[PlanItem]) -> list[str]:
        """The prompt of each item: its own, or its labels through ``prompt_template``."""
        return captions_for_items(self.schema, items, self.prompt_template)

    def check_loadable(self) -> None:
        self.pipeline()

    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        """One image per item, in item order, each from a generator seeded with the item's seed; its
        manifest ``text`` is the prompt actually used (also for items planned without one).

        Raises:
            FileNotFoundError: if the checkpoint cannot be loaded (see :func:`~sd_common.load_pipeline`).
        """
        if not items:
            return []
        c = self.config
        prompts = self.prompts(items)
        negative = None if c.negative_prompt is None else [c.negative_prompt] * len(items)
        out = self.pipeline()(
            prompt=prompts, negative_prompt=negative, guidance_scale=c.guidance_scale,
            num_inference_steps=c.num_inference_steps, height=c.height, width=c.width,
            generator=item_generators(items), output_type="pil",
        )
        return [Generated(image, {"text": prompt}) for image, prompt in zip(out.images, prompts)]

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {**super().provenance(), "model": c.model, "pipeline": c.pipeline,
                "prompt_template": self.prompt_template, "dtype": self.precision}
