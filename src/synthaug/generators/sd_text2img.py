"""``sd-text2img``: a pretrained text-to-image diffusion pipeline prompted with captions made from labels.

Any diffusers text-to-image checkpoint works (SD 1.x, 2.x, SDXL, ...), named by local folder or hub id. The
prompt of each plan item is its own ``prompt`` if set, else its labels through a template
(:mod:`synthaug.data.captions`): "a photo of a {class}" for single-label data, the DeepFashion study's
"A person wearing {attributes} clothes" for attribute data. Each item's noise comes from its own seeded
generator, so an item gives the same image whatever batch it is in. An unlabelled item (the pseudo-labelled
control) is prompted with the empty prompt, with the same guidance and negative prompt.

With ``feedback`` a classifier trained on the real data steers sampling (Askari-Hemmat et al., 2024): through
the pipeline's ``callback_on_step_end``, the latents of each guided step are moved along the gradient of the
classifier's criterion on their predicted clean image, decoded by the VAE
(:class:`~synthaug.generators.feedback.LatentFeedback`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline

from synthaug.generators.configs import SDText2ImgConfig
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.data.captions import captions_for_items, check_template, default_template
from synthaug.generators.feedback import FeedbackGuidance, LatentFeedback, check_pipeline
from synthaug.generators.sd_common import (
    Precision, item_generators, load_pipeline, optimize_for_inference, set_scheduler,
)
from synthaug.plan import PlanItem

log = logging.getLogger(__name__)


@register_generator("sd-text2img")
class SDText2ImgGenerator(Generator):
    """Generates each plan item with a pretrained text-to-image pipeline prompted from its labels."""

    config_class = SDText2ImgConfig
    config: SDText2ImgConfig
    pseudo_control = ("samples of the same pipeline from the empty prompt (same guidance and negative prompt), "
                      "labelled by the real-only classifier")
    _pipe: DiffusionPipeline | None = None
    _feedback: FeedbackGuidance | None = None
    _feedback_key: tuple | None = None  # the settings and real images `_feedback` was built for
    feedback_seconds: float = 0.0  # time spent in feedback guidance by this generator object

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
        """Loads the pipeline and, with ``feedback``, checks that it can be guided. The feedback classifier is
        loaded by the first :meth:`sample`: the runner trains a classifier named by its arm after this check."""
        pipe = self.pipeline()
        if self.config.feedback is not None and self.config.feedback.scale != 0:
            check_pipeline(pipe)

    def feedback_guidance(self) -> FeedbackGuidance | None:
        """The classifier feedback of ``config.feedback`` (loaded once per setting), or None when it is off.

        Raises:
            SettingError: the pipeline cannot be guided (:func:`~synthaug.generators.feedback.check_pipeline`),
                or the classifier does not fit this generator (see :class:`FeedbackGuidance`).
            MissingFileError: ``feedback.classifier`` is no classifier folder.
        """
        c = self.config.feedback
        if c is None or c.scale == 0:
            return None
        pipe = self.pipeline()
        key = (c.model_dump_json(), id(self.real), str(self.device))
        if self._feedback_key != key:  # checked and loaded once per setting, not per batch
            check_pipeline(pipe)
            self._feedback = FeedbackGuidance(c, self.schema, self.device, channels=pipe.vae.config.out_channels,
                                              real=self.real, generator=self.name)
            self._feedback_key = key
        return self._feedback

    def _feedback_kwargs(self, items: Sequence[PlanItem]) -> tuple[dict[str, Any], LatentFeedback | None]:
        """The pipeline's callback arguments for feedback guidance (none when it is off) and the callback. The
        criterion reads each item's class in the first label group; unlabelled items get the null class
        (``entropy`` alone scores them)."""
        guidance = self.feedback_guidance()
        if guidance is None:
            return {}, None
        null = guidance.num_classes
        labels = torch.tensor([null if it.labels is None else int(it.labels[0]) for it in items])
        callback = LatentFeedback(guidance, labels, null)
        return {"callback_on_step_end": callback,
                "callback_on_step_end_tensor_inputs": list(LatentFeedback.tensor_inputs)}, callback

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
        feedback_kwargs, feedback = self._feedback_kwargs(items)
        start = time.perf_counter()
        out = self.pipeline()(
            prompt=prompts, negative_prompt=negative, guidance_scale=c.guidance_scale,
            num_inference_steps=c.num_inference_steps, height=c.height, width=c.width,
            generator=item_generators(items), output_type="pil", **feedback_kwargs,
        )
        if feedback is not None:
            self.feedback_seconds += feedback.seconds
            log.info("Feedback guidance: %d guided steps, %.2f s of this batch's %.2f s of sampling.",
                     feedback.guided_steps, feedback.seconds, time.perf_counter() - start)
        return [Generated(image, {"text": prompt}) for image, prompt in zip(out.images, prompts)]

    def sampling_params(self, record: dict[str, Any]) -> dict[str, Any]:
        # lines written without feedback do not name it (it is left out of the provenance when off)
        return {"feedback": None, **super().sampling_params(record)}

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {**super().provenance(), "model": c.model, "pipeline": c.pipeline,
                "prompt_template": self.prompt_template, "dtype": self.precision}
