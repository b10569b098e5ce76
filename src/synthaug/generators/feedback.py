"""Classifier-feedback guidance of diffusion sampling (Askari-Hemmat et al., TMLR 2024, "Feedback-guided data
synthesis with diffusion models"): a classifier trained on the long-tailed real data scores the clean image that
each item's sampling path predicts, and the path is pushed up the gradient of that score, as classifier guidance
(Dhariwal & Nichol, 2021) pushes it up log p(y|x). The settings: :class:`~synthaug.generators.configs.FeedbackConfig`.

This module owns what the guided samplers share:

- :func:`predicted_clean` and :func:`output_shift`: x̂0 from a network's output, and the change of the output that
  moves x̂0 by a given amount;
- :class:`FeedbackGuidance`: the classifier (loaded, checked against the generator's classes and image channels),
  its differentiable test-time transform, the criterion, which steps are guided, and the per-item push; ``ddpm``
  applies it inside its own sampling loop (:meth:`FeedbackGuidance.shift`);
- :class:`LatentFeedback`: the same push for a diffusers latent text-to-image pipeline (``sd-text2img``,
  ``sd-finetune``), given to it as ``callback_on_step_end``: x̂0 of the latents is decoded by the VAE for the
  classifier, and the latents are moved; :func:`check_pipeline` refuses a pipeline it cannot guide.
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import MissingFileError, SettingError
from synthaug.generators.configs import FeedbackConfig
from synthaug.imaging import load_tensor

FIELD = "generator.params.feedback"


def predicted_clean(output: torch.Tensor, x: torch.Tensor, alpha_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """x̂0, the clean image the network's ``output`` at x_t predicts: x̂0 = (x_t − σ ε)/α for ε, α x_t − σ v for v
    (Salimans & Ho, 2022), the output itself for x0; α = √ᾱ_t, σ = √(1−ᾱ_t)."""
    alpha, sigma = alpha_cumprod.sqrt(), (1 - alpha_cumprod).sqrt()
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output
    return output


def output_shift(clean_shift: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The change of the network's output, at a fixed x_t, that moves x̂0 by ``clean_shift``: −(α/σ) Δx̂0 for ε
    (classifier guidance's ε̂ − σ ∇, Dhariwal & Nichol 2021, with ∇ measured on x̂0), −Δx̂0/σ for v, Δx̂0 for x0.
    Every sampler reads the shifted output as this x̂0."""
    alpha, sigma = alpha_cumprod.sqrt(), (1 - alpha_cumprod).sqrt()
    if prediction_type == "epsilon":
        return -alpha / sigma * clean_shift
    if prediction_type == "v_prediction":
        return -clean_shift / sigma
    return clean_shift


class FeedbackGuidance:
    """Feedback-guided sampling (Askari-Hemmat et al., TMLR 2024): a classifier trained on the long-tailed real
    data scores each item's predicted clean image, and x̂0 is moved up the gradient of that score.

    At a guided step: (1) x̂0 from x_t and the network's output (:func:`predicted_clean`), decoded to pixels where
    the model works in a latent space; (2) clamped to [-1, 1], mapped to [0, 1] and through the classifier's own
    test-time transform (the one :func:`~synthaug.train.loop.predict` applies: resize, centre crop,
    normalisation; torchvision's ops are differentiable on float tensors); (3) the criterion per item, for the
    item's class in the schema's first label group; (4) its gradient, rescaled per item to unit RMS and times
    ``scale`` (:meth:`push`); (5) x̂0 moved by that. Per item and without random draws: an item's image does not
    depend on the batch it is sampled in.

    Args:
        config: the feedback settings.
        schema: the generator's labels; the classifier must classify its first group's classes, in order.
        device: where the classifier runs.
        channels: the channels of the generator's images (1 or 3).
        real: the real training images (the class Gaussians of ``hardness``; None otherwise allowed).
        generator: the generator's name, for messages.

    Raises:
        MissingFileError: ``config.classifier`` is no classifier folder.
        SettingError: its classes are not the generator's, it cannot read the images' channels, or ``hardness``
            is asked for without real images.
    """

    def __init__(self, config: FeedbackConfig, schema: LabelSchema, device: torch.device, *, channels: int,
                 real: LabeledImages | None, generator: str):
        from synthaug.train.augment import eval_transform
        from synthaug.train.models import load_classifier

        self.config, self.generator, field = config, generator, f"{FIELD}.classifier"
        try:
            self.classifier, meta = load_classifier(config.classifier, device)
        except MissingFileError as e:
            raise MissingFileError(f"{field}={config.classifier!r} is no classifier folder: {e} An arm's classifier "
                                   "lies in <run>/train/<arm>/seed<k>/model; use one trained on the training split "
                                   "only (not the oracle or the judge).") from None
        wanted, got = schema.groups[0].classes, self.classifier_classes(meta)
        if list(got) != list(wanted):
            raise SettingError(f"{field}={config.classifier!r} classifies {list(got)[:6]}..., but this {generator} "
                               f"generator draws {list(wanted)[:6]}...; give a classifier trained on this "
                               "experiment's data.")
        self.classifier.requires_grad_(False)
        self.in_chans = int(meta["in_chans"])
        if self.in_chans not in (1, 3) or channels not in (1, 3):
            raise SettingError(f"{field}: a {self.in_chans}-channel classifier cannot read the {channels}-channel "
                               f"images of this {generator} generator.")
        self.image_size, self.num_classes = meta["image_size"], len(wanted)
        self.transform = eval_transform(self.in_chans, self.image_size, self.classifier.normalization)
        self.centres = self.precision_matrix = None
        if config.criterion == "hardness":
            self._fit_class_gaussians(real, device)

    @staticmethod
    def classifier_classes(meta: dict) -> list[str]:
        return LabelSchema.from_dict(meta["schema"]).groups[0].classes

    def active(self, index: int, total: int) -> bool:
        """Whether sampling step ``index`` (of ``total``, counted from the pure-noise step) is guided."""
        start, end = self.config.steps
        return self.config.scale != 0 and start <= index / total < end and index % self.config.every == 0

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images as the classifier reads them (channels as PIL converts modes, then its transform)."""
        channels = images.shape[1]
        if self.in_chans == 3 and channels == 1:
            images = images.expand(-1, 3, -1, -1)
        elif self.in_chans == 1 and channels == 3:  # PIL's "L": ITU-R 601-2 luma
            images = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return self.transform(images)

    def _fit_class_gaussians(self, real: LabeledImages | None, device: torch.device) -> None:
        """Class means of the classifier's features on the real training images and the inverse of one shared
        covariance, shrunk 10 % towards its mean variance (Sehwag et al., 2022 fit a Gaussian per class; with 4
        images a class that has no inverse, so the classes share one)."""
        if real is None or not len(real):
            raise SettingError(f"{FIELD}.criterion='hardness' measures distances to the real training images' "
                               f"class means, but this {self.generator} generator was given none: run it through "
                               "`synthaug run`/`generate` (they pass the training split), or call "
                               "generator.use_real(images) first; or use criterion loss or entropy.")
        with torch.no_grad():
            images = load_tensor(real, size=self.image_size)
            feats = torch.cat([self.classifier.backbone(self._inputs(chunk.to(device))).float()
                               for chunk in images.split(256)])
        labels = torch.as_tensor(real.labels[:, 0], device=feats.device)
        classes = self.num_classes
        counts = torch.bincount(labels, minlength=classes).clamp_min(1).float()
        self.centres = torch.zeros(classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
        self.centres /= counts[:, None]
        within = feats - self.centres[labels]
        cov = within.T @ within / max(len(feats) - classes, 1)
        shrunk = 0.9 * cov + 0.1 * cov.diagonal().mean() * torch.eye(len(cov), device=cov.device)
        self.precision_matrix = torch.linalg.inv(shrunk + 1e-6 * torch.eye(len(cov), device=cov.device))

    def criterion(self, clean: torch.Tensor, y: torch.Tensor, null: int) -> torch.Tensor:
        """The criterion of each item's x̂0 ``clean`` (pixels in [-1, 1]) for its class ``y`` (``null``:
        unlabelled, which only ``entropy`` scores)."""
        inputs = self._inputs((clean.clamp(-1, 1) + 1) / 2)
        labelled = y != null
        target = torch.where(labelled, y, torch.zeros_like(y))
        kind = self.config.criterion
        if kind == "hardness":
            gap = self.classifier.backbone(inputs).float() - self.centres[target]
            return ((gap @ self.precision_matrix) * gap).sum(1) * labelled
        logits = self.classifier.split_logits(self.classifier(inputs).float())[0]
        if kind == "loss":
            return F.cross_entropy(logits, target, reduction="none") * labelled
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)

    def push(self, scores: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
        """``scale`` times the gradient of each item's score w.r.t. its rows of ``wrt``, rescaled per item to unit
        root mean square (the study's code rescales it to the latents' norm), in float32. Items without a gradient
        (unlabelled ones under loss or hardness) get 0."""
        (grad,) = torch.autograd.grad(scores.sum(), wrt)
        grad = grad.float()
        rms = grad.pow(2).mean(dim=tuple(range(1, grad.dim())), keepdim=True).sqrt()
        return self.config.scale * grad / rms.clamp_min(1e-12)

    def shift(self, output: torch.Tensor, x: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str,
              y: torch.Tensor, null: int) -> torch.Tensor:
        """``output`` (computed from ``x``, which requires grad) shifted so that x̂0 moves by the push, whose
        gradient is taken w.r.t. x_t through x̂0 and the network (:func:`output_shift`); detached.

        The study adds the gradient to ε (Dhariwal & Nichol's form ε̂ − √(1−ᾱ) s ∇); on trailing timesteps the first
        step has ᾱ = 2.4e-9 (squaredcos, t = 999), where that form moves x̂0 by 1/√ᾱ ≈ 20,000 times the shift, so
        the shift is set on x̂0 instead."""
        clean = predicted_clean(output, x, alpha_cumprod, prediction_type)
        step = self.push(self.criterion(clean, y, null), x)
        return (output + output_shift(step, alpha_cumprod, prediction_type)).detach()


def _sigma_space(scheduler) -> bool:
    """Whether the scheduler keeps its samples as x = x0 + σ ε (Karras et al., 2022: euler, euler-ancestral, ...)
    rather than x = √ᾱ x0 + √(1−ᾱ) ε: its initial noise is scaled beyond unit variance."""
    return hasattr(scheduler, "sigmas") and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1


def noise_level(scheduler, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ at the scheduler's ``step``-th timestep, and the factor taking its latents to the form √ᾱ x0 + √(1−ᾱ) ε
    (the one its ``scale_model_input`` hands the UNet): 1, or for samplers that keep x = x0 + σ ε (euler),
    1/√(1+σ²) = √ᾱ, where ᾱ = 1/(1+σ²) (diffusers' Euler schedulers build σ² = (1−ᾱ)/ᾱ)."""
    if _sigma_space(scheduler):
        sigma = torch.as_tensor(scheduler.sigmas[step], dtype=torch.float32)
        alpha_cumprod = 1 / (1 + sigma**2)
        return alpha_cumprod, alpha_cumprod.sqrt()
    t = int(scheduler.timesteps[step])
    return torch.as_tensor(scheduler.alphas_cumprod[t], dtype=torch.float32), torch.tensor(1.0)


def check_pipeline(pipe) -> None:
    """Refuses a pipeline :class:`LatentFeedback` cannot guide: one whose ``__call__`` takes no
    ``callback_on_step_end`` or cannot hand it the latents and prompt embeddings, or whose denoiser is not a UNet
    conditioned on the prompt alone with a VAE to decode its latents (as Stable Diffusion 1.x/2.x).

    Raises:
        SettingError: naming ``generator.params.feedback``, the pipeline class and what it lacks.
    """
    name = type(pipe).__name__
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        raise SettingError(f"{FIELD} pushes the latents between sampling steps through diffusers' "
                           f"callback_on_step_end, which {name}.__call__ does not take; use a pipeline class that "
                           "does (generator.params.pipeline, e.g. 'StableDiffusionPipeline' in diffusers >= 0.22), "
                           f"or unset {FIELD}.")
    offered = getattr(pipe, "_callback_tensor_inputs", ())  # the documented list of what the callback may read
    missing = [k for k in LatentFeedback.tensor_inputs if k not in offered]
    unet_config = getattr(getattr(pipe, "unet", None), "config", None)
    extra = [] if unet_config is None else [k for k in ("addition_embed_type", "time_cond_proj_dim",
                                                        "class_embed_type") if unet_config.get(k) is not None]
    if missing or unet_config is None or "cross_attention_dim" not in unet_config or extra \
            or getattr(pipe, "vae", None) is None:
        why = (f"its callback cannot read {missing}" if missing else
               f"its UNet also takes {extra}" if extra else "it has no text-conditioned UNet and VAE")
        raise SettingError(f"{FIELD} guides pipelines whose UNet is conditioned on the prompt alone and whose "
                           f"latents a VAE decodes (Stable Diffusion 1.x/2.x); {name} is not one ({why}). Use "
                           f"such a model, or unset {FIELD}.")


class LatentFeedback:
    """Feedback guidance of a diffusers latent text-to-image pipeline, as its ``callback_on_step_end``.

    The pipeline calls it at the end of step i with the latents x at the next timestep t' = timesteps[i+1]. When
    step i+1 is guided (:meth:`FeedbackGuidance.active`):

    1. the UNet's prediction at (x, t') for the prompt alone (under classifier-free guidance the pipeline's
       embeddings are [negative, prompt]: the second half), without gradient; x̂0 by :func:`predicted_clean`;
    2. x̂0 decoded by the VAE to pixels in [-1, 1] for the classifier, and the criterion's gradient w.r.t. x̂0 in
       latent space (through the decoder, not the UNet), rescaled per item to unit RMS, times ``scale``: Δx̂0;
    3. x moved as if it had been made from x̂0 + Δx̂0 with the same noise: x_t = √ᾱ x0 + √(1−ᾱ) ε gives
       Δx = √ᾱ Δx̂0 (classifier guidance's shift of ε̂ read as a move of x_t, Dhariwal & Nichol 2021); samplers
       that keep x = x0 + σ ε (euler) get Δx = Δx̂0.

    A guided step costs one UNet pass and a VAE decode with its backward pass. A step that only redoes the
    previous one from its input (PNDM's first PLMS step repeats its timestep) is not guided: its push would be
    dropped. ``seconds`` adds up the time spent here.
    """

    tensor_inputs = ("latents", "prompt_embeds")

    def __init__(self, guidance: FeedbackGuidance, labels: torch.Tensor, null: int):
        self.guidance, self.labels, self.null = guidance, labels, null
        self.seconds, self.guided_steps = 0.0, 0

    def __call__(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        timesteps, step = pipe.scheduler.timesteps, i + 1
        if step >= len(timesteps) or not self.guidance.active(step, len(timesteps)):
            return {}
        if step + 1 < len(timesteps) and bool(timesteps[step] == timesteps[step + 1]):
            return {}  # step `step` restarts from the input of step i
        latents = callback_kwargs["latents"]
        _synchronize(latents.device)
        start = time.perf_counter()
        moved = self.move(pipe, step, latents, callback_kwargs["prompt_embeds"])
        _synchronize(latents.device)
        self.seconds += time.perf_counter() - start
        self.guided_steps += 1
        return {"latents": moved}

    def move(self, pipe, step: int, latents: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The latents at timestep ``timesteps[step]`` moved up the criterion (steps 1-3 above)."""
        scheduler, vae = pipe.scheduler, pipe.vae
        t = scheduler.timesteps[step]
        if len(prompt_embeds) == 2 * len(latents):  # classifier-free guidance: [negative, prompt]
            prompt_embeds = prompt_embeds.chunk(2)[1]
        alpha_cumprod, to_vp = noise_level(scheduler, step)
        alpha_cumprod, to_vp = alpha_cumprod.to(latents.device), to_vp.to(latents.device)
        with torch.no_grad():  # 1. x̂0 of the prompt's own prediction
            output = pipe.unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=prompt_embeds,
                               cross_attention_kwargs=getattr(pipe, "cross_attention_kwargs", None),
                               return_dict=False)[0]
            clean = predicted_clean(output.float(), latents.float() * to_vp, alpha_cumprod,
                                    scheduler.config.prediction_type)
        with torch.enable_grad():  # 2. the classifier's push on x̂0, through the VAE decoder
            clean = clean.to(vae.dtype).requires_grad_(True)
            image = vae.decode(clean / vae.config.scaling_factor, return_dict=False)[0]
            labels = self.labels.to(latents.device)
            delta = self.guidance.push(self.guidance.criterion(image.float(), labels, self.null), clean)
        # 3. x_t from the moved x̂0 with the same noise, in the scheduler's own form of x_t
        return (latents.float() + alpha_cumprod.sqrt() / to_vp * delta).to(latents.dtype)


def _synchronize(device: torch.device) -> None:
    """Waits for the GPU's queued work, so that the clock measures what ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
