"""``ddpm``: a class-conditional DDPM trained from scratch (Ho et al., 2020) with classifier-free guidance
(Ho & Salimans, 2022), built on diffusers' ``UNet2DModel`` and schedulers.

Training follows diffusers' unconditional training example: MSE on ``DDPMScheduler.add_noise`` inputs, with
the network predicting v = √ᾱ ε − √(1−ᾱ) x₀ by default (Salimans & Ho, 2022; ``prediction_type``) or ε, AdamW
with warm-up, EMA weights, in the shared accelerate loop of :mod:`~synthaug.generators.diffusion_training` (fp16
with a loss scaler; data-parallel under ``accelerate launch``). Labels are dropped to a null class with
probability ``label_dropout`` so one network learns p(x|y) and p(x); sampling mixes the two with
``guidance_scale``. Each training step draws its batch, noise and timesteps from a generator seeded by (seed,
step), so a resumed run continues exactly where it stopped and N processes (each training its rows of that
batch) train what one does; sampling noise comes from one CPU generator per item, so an item gives the same
image on CPU and CUDA, whatever the batch.

With ``translate_from`` an image starts from a real training image instead of pure noise (SDEdit, Meng et al.,
2022): of another class, Diff-Mix's inter-class translation (Wang et al., CVPR 2024), or of its own. The source is
picked from the item's seed and named in the manifest's ``source_ids``.

With ``feedback`` a classifier trained on the real data steers sampling by its gradient on each step's predicted
clean image (Askari-Hemmat et al., 2024; :mod:`~synthaug.generators.feedback`).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel, UniPCMultistepScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import randn_tensor

from synthaug.data.schema import LabeledImages
from synthaug.generators.configs import DDPMConfig
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.train.checkpoint import MODEL_INFO, StepCheckpoints, check_model_info, reading, recover_model_dir
from synthaug.generators.diffusion_training import (
    BatchShare, DiffusionTraining, checked_main_first, denoising_target, make_accelerator, train_diffusion,
)
from synthaug.generators.feedback import FeedbackGuidance
from synthaug.generators.real_images import class_pools, pick_sources
from synthaug.generators.sd_common import item_generators
from synthaug.imaging import load_tensor, to_pil
from synthaug.plan import PlanItem
from synthaug.torch_utils import autocast, resolve_precision
from synthaug.utils import derive_seed, read_json, write_json
from synthaug.errors import SettingError, MissingFileError

log = logging.getLogger(__name__)

SAMPLERS = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler, "ddim": DDIMScheduler,
            "ddpm": DDPMScheduler}


class _DDPMBatches:
    """The denoising loss of one training step's batch (Ho et al., 2020), drawn whole from the step's generator."""

    def __init__(self, config: DDPMConfig, noise_scheduler: DDPMScheduler, data: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor, num_classes: int):
        self.c, self.noise_scheduler, self.data, self.labels = config, noise_scheduler, data, labels
        self.weights, self.num_classes = weights, num_classes

    def loss(self, unet: torch.nn.Module, step: int, g: torch.Generator, share: BatchShare) -> torch.Tensor:
        c, n, device = self.c, self.c.batch_size, self.data.device
        # 1. the whole batch's draws, in one order whatever this process's share: images, noise, timesteps, dropout
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        noise = torch.randn((n, *self.data.shape[1:]), generator=g)
        t = torch.randint(0, c.num_train_timesteps, (n,), generator=g)
        drop = torch.rand(n, generator=g) < c.label_dropout if c.conditional else None
        warp = random_affine(n, g) if c.augment == "affine" else None  # drawn after the old draws: they stay
        other = torch.randint(0, self.num_classes, (n,), generator=g) if c.cbdm_tau > 0 else None
        idx, noise, t = share.take(idx).to(device), share.take(noise).to(device), share.take(t).to(device)
        x0, y = self.data[idx], self.labels[idx]
        if warp is not None:
            x0 = apply_affine(x0, share.take(warp).to(device))
        if drop is not None:  # 2. classifier-free guidance: drop labels to the null class
            y = torch.where(share.take(drop).to(device), torch.full_like(y, self.num_classes), y)
        xt = self.noise_scheduler.add_noise(x0, noise, t)  # 3. forward process q(x_t | x_0)
        if other is None:
            pred = unet(xt, t, class_labels=y if c.conditional else None).sample.float()
        else:  # the same noisy images under a uniformly drawn class too, in one pass
            other = share.take(other).to(device)
            pred, pred_other = unet(torch.cat([xt, xt]), torch.cat([t, t]),
                                    class_labels=torch.cat([y, other])).sample.float().chunk(2)
        target = denoising_target(c.prediction_type, x0, noise, t, self.noise_scheduler)
        loss = F.mse_loss(pred, target)  # 4. the denoising objective
        if other is not None:  # 5. CBDM's class-balancing regulariser
            loss = loss + class_balancing_loss(pred, pred_other, t, labelled=y != self.num_classes,
                                               tau=c.cbdm_tau, num_train_timesteps=c.num_train_timesteps)
        return share.weight(loss, n)


def class_balancing_loss(pred: torch.Tensor, pred_other: torch.Tensor, t: torch.Tensor, *, labelled: torch.Tensor,
                         tau: float, num_train_timesteps: int, commitment: float = 0.25) -> torch.Tensor:
    """CBDM's regulariser (Qin et al., CVPR 2023, "Class-Balancing Diffusion Models"): the prediction for an
    image's own class is pulled towards the prediction for a uniformly drawn class y' on the same noisy input, and
    (with ``commitment``) that one towards it, each with the other side held fixed, weighted τ t / T — strongest at
    high noise, where the classes share their coarse layout. A rare class, trained on few images, borrows the
    variety the common classes give the shared layers; the balanced y' aims the model at a uniform label prior.
    Rows whose label was dropped to the null class (``labelled`` False) take no part."""
    w = (tau * t.float() / num_train_timesteps * labelled.float()).view(-1, *[1] * (pred.dim() - 1))
    pull = (w * (pred - pred_other.detach()) ** 2).mean()
    commit = (w * (pred.detach() - pred_other) ** 2).mean()
    return pull + commitment * commit


def random_affine(n: int, g: torch.Generator, *, degrees: float = 10.0, translate: float = 0.1,
                  scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """``n`` random affine maps as ``affine_grid`` matrices (n, 2, 3) in normalised coordinates: rotation in
    ±``degrees``, shift in ±``translate`` of the image side, zoom in ``scale`` (torchvision's RandomAffine
    ranges), drawn from ``g`` — per image and from the step's generator, so a batch split over processes or
    resumed from a checkpoint warps as one process would (torchvision's transform draws from the global RNG)."""
    u = torch.rand((n, 4), generator=g)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * degrees)
    zoom = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * translate * 2  # a fraction of the side; normalised coordinates span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warps images ``x`` (n, c, h, w) by ``theta`` (bilinear; pixels from outside repeat the border, which is
    the background for digits)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def image_weights(labels: torch.Tensor, num_classes: int, class_balanced: bool) -> torch.Tensor:
    """Each training image's chance of being drawn into a batch: ∝ 1 / (images of its class) when
    ``class_balanced`` (every class drawn equally often, however rare), else uniform (classes as often as the data
    has them)."""
    if not class_balanced:
        return torch.ones(len(labels))
    return 1.0 / torch.bincount(labels, minlength=num_classes).float()[labels]


def translation_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The last ``strength`` share of the scheduler's ``steps`` sampling timesteps (diffusers' img2img rule:
    ``int(steps * strength)`` of them), and the scheduler set to begin there.

    Raises:
        SettingError: when that is no step at all.
    """
    run = min(int(steps * strength), steps)
    if run < 1:
        raise SettingError(f"generator.params.strength={strength} runs int({steps} x {strength}) = 0 of the "
                           f"{steps} sampling steps; raise strength to at least {1 / steps:.3g} or sampling_steps.")
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def guided_noise(eps_cond: torch.Tensor, eps_null: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans, 2022, Eq. 6): ε = ε_∅ + w (ε_y − ε_∅); the same linear mix
    applies to a v- or x0-predicting network's outputs.

    w = 0 gives the null-class (unconditional) prediction, w = 1 the conditional one, w > 1 pushes past it.
    """
    return eps_null + guidance_scale * (eps_cond - eps_null)


@register_generator("ddpm")
class DDPMGenerator(Generator):
    config_class = DDPMConfig
    config: DDPMConfig
    distributed_fit = True  # every process trains its share of each batch
    pseudo_control = "unconditional samples of the same DDPM (its null class), labelled by the real-only classifier"

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def model_dir(self) -> Path:
        return Path(self.config.checkpoint) if self.config.checkpoint else self.workdir / "model"

    def is_fitted(self) -> bool:
        """True when ``model_dir`` holds a complete model: a given ``checkpoint`` (for this label schema), or
        one this workdir trained with the current training settings."""
        if self.config.checkpoint:
            return (self.model_dir / "unet" / "config.json").is_file()
        recover_model_dir(self.model_dir)
        path = self.model_dir / MODEL_INFO
        if not path.is_file():
            return False
        info, wanted = read_json(path), self.config.training_part()
        # models written before the "training" record: compare the same fields of their full config
        saved = info.get("training") or {k: info.get("config", {}).get(k) for k in wanted}
        return saved == wanted

    @property
    def precision(self) -> str:
        return resolve_precision(self.config.precision, self.device, what="generator.params.precision")

    @property
    def channels_last(self) -> bool:
        """``channels_last: auto`` is on for fp32 on a CPU only: measured on the demo UNet (BENCHMARKS.md),
        fp32 on AVX2 kernels sampled 5-25 % faster, native bf16 11-29 % slower; the images are the same."""
        if self.config.channels_last == "auto":
            return self.device.type == "cpu" and self.precision == "fp32"
        return self.config.channels_last

    @property
    def num_classes(self) -> int:
        return len(self.schema.groups[0].classes)

    def _build_unet(self, channels: int, size: int) -> UNet2DModel:
        c = self.config
        levels = len(c.block_out_channels)
        if any(ch % c.norm_num_groups for ch in c.block_out_channels):
            raise SettingError(f"generator.params.block_out_channels {list(c.block_out_channels)} must all be divisible "
                             f"by generator.params.norm_num_groups={c.norm_num_groups}.")
        if min(c.block_out_channels) // c.norm_num_groups < 4:
            # measured on the demo: [16, 32, 32] with 8 groups (2 channels per group) gave speckled backgrounds
            # that a real-data classifier read as "8" for 93-100 % of samples; 1 channel per group, grey ones
            log.warning("generator.params.norm_num_groups=%d leaves %d channel(s) per group on the %d-channel level; "
                        "with fewer than 4 the norm strips the background level and samples get noisy "
                        "backgrounds. Use norm_num_groups <= %d.", c.norm_num_groups,
                        min(c.block_out_channels) // c.norm_num_groups, min(c.block_out_channels),
                        max(1, min(c.block_out_channels) // 4))
        if size % (2 ** (levels - 1)):
            raise SettingError(f"image_size {size} must be divisible by {2 ** (levels - 1)} for {levels} levels "
                             "(generator.params.block_out_channels); set generator.params.image_size.")
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if c.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            down_block_types=tuple(down), up_block_types=tuple(up),
            norm_num_groups=c.norm_num_groups,
            num_class_embeds=self.num_classes + 1 if c.conditional else None,  # last index = null class
        )

    def _noise_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(num_train_timesteps=self.config.num_train_timesteps,
                             beta_schedule=self.config.beta_schedule,
                             prediction_type=self.config.prediction_type)

    # ---------------------------------------------------------------------------------------------- training
    def fit(self, real: LabeledImages) -> None:
        """Trains the UNet on ``real`` (resuming from ``workdir/checkpoints``) and saves it to ``workdir/model``;
        nothing when that model was trained with the same settings. Under ``accelerate launch`` every process
        calls it and trains its share of each batch (see :mod:`~synthaug.generators.diffusion_training`)."""
        c = self.config
        self.use_real(real)
        if c.checkpoint:
            self._check_checkpoint()
            return
        if checked_main_first(self.is_fitted, self.device):  # the same training settings: nothing to do
            return
        if not self.schema.is_single_label:
            raise SettingError("The ddpm generator conditions on one label group; this schema has "
                             f"{len(self.schema.groups)}.")
        if c.cbdm_tau > 0 and not c.conditional:
            raise SettingError(f"generator.params.cbdm_tau={c.cbdm_tau} regularises class-conditional predictions, "
                               "but generator.params.conditional is false; set cbdm_tau: 0 or conditional: true.")
        accelerator = make_accelerator(self.precision, self.device, field="generator.params.precision")
        BatchShare(0, accelerator.num_processes).check(c.batch_size, "generator.params.batch_size")
        data = load_tensor(real, size=c.image_size, progress=False) * 2 - 1
        labels = torch.as_tensor(real.labels[:, 0])
        torch.manual_seed(derive_seed(self.seed, "ddpm-init"))
        unet = self._build_unet(data.shape[1], data.shape[-1]).to(accelerator.device)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        ema = EMAModel(unet.parameters(), decay=c.ema_decay, model_cls=UNet2DModel, model_config=unet.config) \
            if c.ema_decay > 0 else None
        batch = _DDPMBatches(c, self._noise_scheduler(), data.to(accelerator.device), labels.to(accelerator.device),
                             image_weights(labels, self.num_classes, c.class_balanced), self.num_classes)
        training = DiffusionTraining(
            model=unet, optimizer=optimizer,
            lr_schedule=get_cosine_schedule_with_warmup(optimizer, c.warmup_steps, max(c.train_steps, 1)),
            loss=batch.loss, draw_seed=lambda step, micro: derive_seed(self.seed, "ddpm-step", step), ema=ema,
            write_checkpoint=self._write_checkpoint, read_checkpoint=self._read_checkpoint,
            write_model=self._write_model)
        train_diffusion(training, accelerator, train_steps=c.train_steps, checkpoint_every=c.checkpoint_every,
                        checkpoints=self._checkpoints, model_dir=self.model_dir, progress=self.progress,
                        desc="train ddpm")
        self._unet = None

    @property
    def _checkpoints(self) -> StepCheckpoints:
        return StepCheckpoints(self.workdir / "checkpoints")

    @staticmethod
    def _write_checkpoint(folder: Path, unet: UNet2DModel, ema: EMAModel | None) -> None:
        unet.save_pretrained(folder / "unet")  # safetensors
        if ema is not None:
            ema.save_pretrained(folder / "ema")

    @staticmethod
    def _read_checkpoint(folder: Path, unet: UNet2DModel, ema: EMAModel | None) -> None:
        unet.load_state_dict(UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True).state_dict())
        if ema is not None and (folder / "ema").exists():
            ema.load_state_dict(EMAModel.from_pretrained(folder / "ema", model_cls=UNet2DModel).state_dict())

    def _write_model(self, folder: Path, unet: UNet2DModel, ema: EMAModel | None) -> None:
        unet.save_pretrained(folder / "unet")
        self._noise_scheduler().save_pretrained(folder / "scheduler")
        write_json(folder / MODEL_INFO, {"generator": "ddpm", "schema": self.schema.to_dict(),
                                         "training": self.config.training_part(),
                                         "config": self.config.model_dump(mode="json")})  # last: marks it complete

    def _check_checkpoint(self) -> None:
        """Refuses a ``checkpoint`` that is missing or was trained for another label schema."""
        if not (self.model_dir / "unet" / "config.json").is_file():
            raise MissingFileError(f"generator.params.checkpoint={self.config.checkpoint!r} holds no trained "
                                   "ddpm model (looked for unet/config.json); give the `model` folder of an "
                                   "earlier ddpm run's workdir, or unset it to train.")
        check_model_info(self.model_dir, self.schema, generator="ddpm", field="generator.params.checkpoint")

    # ---------------------------------------------------------------------------------------------- sampling
    _unet: UNet2DModel | None = None
    _denoiser: torch.nn.Module | None = None  # the UNet, or its torch.compile wrapper
    _pools: dict | None = None  # the class pools of `real`, for translate_from
    _feedback: FeedbackGuidance | None = None
    _feedback_key: tuple | None = None  # the settings and real images `_feedback` was built for

    def use_real(self, real: LabeledImages) -> None:
        super().use_real(real)
        self._pools = None

    def feedback_guidance(self) -> FeedbackGuidance | None:
        """The classifier feedback of ``config.feedback`` (loaded once per setting), or None when it is off."""
        c, unet = self.config.feedback, self._load()
        if c is None or c.scale == 0:
            return None
        key = (c.model_dump_json(), id(self.real), str(self.device))
        if self._feedback_key != key:
            self._feedback = FeedbackGuidance(c, self.schema, self.device, channels=unet.config.in_channels,
                                              real=self.real, generator=self.name)
            self._feedback_key = key
        return self._feedback

    def _load(self) -> UNet2DModel:
        if self._unet is None:
            if self.config.checkpoint:
                self._check_checkpoint()
            elif not self.is_fitted():
                raise MissingFileError(f"No trained ddpm model for these training settings in {self.model_dir} "
                                       f"(looked for unet/ and {MODEL_INFO}); run fit first or set "
                                       "generator.params.checkpoint to a trained model.")
            with reading(self.model_dir / "unet", fix="give the `model` folder of a complete ddpm run (copy it "
                         "again if it was damaged), or unset generator.params.checkpoint to train."):
                unet = UNet2DModel.from_pretrained(self.model_dir / "unet", use_safetensors=True)
            unet = unet.to(self.device).eval()
            if self.channels_last:
                unet.to(memory_format=torch.channels_last)
            self._unet = unet
            self._denoiser = torch.compile(unet) if self.config.enable_compile else unet
        return self._unet

    def check_loadable(self) -> None:
        self._load()
        self.feedback_guidance()

    def _scheduler(self):
        c = self.config
        trained = SAMPLERS[c.sampler].load_config(self.model_dir / "scheduler")  # the training noise schedule
        extra = {"algorithm_type": "dpmsolver++"} if c.sampler == "dpmsolver++" else {}
        scheduler = SAMPLERS[c.sampler].from_config(trained, timestep_spacing=c.timestep_spacing, **extra)
        scheduler.set_timesteps(c.sampling_steps)
        return scheduler

    def predict_noise(self, x: torch.Tensor, t, labels: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The (guided) noise prediction for ``x`` at step ``t``; ``labels`` holds the null class for
        unlabelled samples, which need no guidance pass (their conditional and null predictions agree)."""
        unet = self._load()
        conditional = unet.config.num_class_embeds is not None
        null = (unet.config.num_class_embeds or 1) - 1
        guided = conditional and guidance_scale != 1.0 and bool((labels != null).any())
        denoiser = self._denoiser if self._denoiser is not None else unet

        def eps(model_in: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                model_in = model_in.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                return denoiser(model_in, t, class_labels=cls if conditional else None).sample.float()

        if not guided:
            return eps(x, labels)
        if self.config.guidance_batching:
            eps_cond, eps_null = eps(torch.cat([x, x]), torch.cat([labels, torch.full_like(labels, null)])).chunk(2)
        else:
            eps_cond, eps_null = eps(x, labels), eps(x, torch.full_like(labels, null))
        return guided_noise(eps_cond, eps_null, guidance_scale)

    @torch.no_grad()
    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        if not items:
            return []
        c = self.config
        unet = self._load()
        conditional = unet.config.num_class_embeds is not None
        null = (unet.config.num_class_embeds or 1) - 1
        if not conditional and any(it.labels is not None for it in items):
            raise SettingError("This ddpm model is unconditional; it cannot generate labelled items. "
                               "Use the pseudo-label generator to label its samples.")
        scheduler = self._scheduler()
        # 1. per-item CPU generators: the same item gives the same image whatever the batch and device
        gens = item_generators(items)
        size, ch = unet.config.sample_size, unet.config.in_channels
        x = randn_tensor((len(items), ch, size, size), generator=gens, device=self.device)
        timesteps, metas = scheduler.timesteps, [{} for _ in items]
        if c.translate_from == "none":
            x = x * scheduler.init_noise_sigma
        else:  # 1b. SDEdit: the source image noised to the first of the last `strength` share of the steps
            sources, metas = self._sources(items, size)
            timesteps = translation_timesteps(scheduler, c.sampling_steps, c.strength)
            x = scheduler.add_noise(sources.to(self.device), x, timesteps[:1].repeat(len(items)))
        y = torch.tensor([null if it.labels is None else it.labels[0] for it in items], device=self.device)
        noise_kw = {"generator": gens} if "generator" in inspect.signature(scheduler.step).parameters else {}
        feedback, skipped = self.feedback_guidance(), len(scheduler.timesteps) - len(timesteps)
        for i, t in enumerate(timesteps):
            if feedback is None or not feedback.active(skipped + i, len(scheduler.timesteps)):
                # 2. classifier-free guidance: ε = ε_∅ + w (ε_y − ε_∅)
                eps = self.predict_noise(scheduler.scale_model_input(x, t), t, y, c.guidance_scale)
            else:  # 2b. the same, then shifted by the classifier's feedback on x̂0 (gradient through the UNet)
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    eps = self.predict_noise(scheduler.scale_model_input(x_in, t), t, y, c.guidance_scale)
                    eps = feedback.shift(eps, x_in, scheduler.alphas_cumprod[int(t)].to(x.device),
                                         scheduler.config.prediction_type, y, null)
            x = scheduler.step(eps, t, x, **noise_kw).prev_sample  # 3. stochastic samplers draw from gens
        return [Generated(image, meta) for image, meta in zip(to_pil((x + 1) / 2), metas)]

    def _sources(self, items: Sequence[PlanItem], size: int) -> tuple[torch.Tensor, list[dict]]:
        """The real image each item is translated from (``translate_from``), in [-1, 1] at the model's size, and
        the manifest field naming it. The pick comes from the item's seed (or its recorded ``source_ids``)."""
        c = self.config
        if self.real is None or not len(self.real):
            raise SettingError(f"generator.params.translate_from={c.translate_from!r} starts every image from a "
                               "real training image, but this ddpm generator was given none: run it through "
                               "`synthaug run`/`generate` (they pass the training split), or call "
                               "generator.use_real(images) first; or set translate_from: none.")
        if self._pools is None:
            self._pools = class_pools(self.real)
        picked = []
        for it in items:
            rng = np.random.default_rng(derive_seed(it.seed, "ddpm-source"))
            picked += pick_sources(it, self.real, self._pools, 1, rng, any_class=True,
                                   other_classes=c.translate_from == "other-classes")
        sources = load_tensor(self.real.subset(picked), size=size) * 2 - 1
        return sources, [{"source_ids": [self.real.ids[i]]} for i in picked]

    def sampling_params(self, record: dict) -> dict:
        # lines written before `timestep_spacing` existed were sampled with the scheduler's "leading" default;
        # lines from noise name neither translate_from (left out at "none") nor strength (which then does nothing)
        return {"timestep_spacing": "leading", "translate_from": "none", "strength": self.config.strength,
                "feedback": None, **super().sampling_params(record)}

    def provenance(self) -> dict:
        c = self.config
        return {**super().provenance(), "model": "UNet2DModel", "checkpoint": str(self.model_dir),
                "num_inference_steps": c.sampling_steps, "precision": self.precision}
