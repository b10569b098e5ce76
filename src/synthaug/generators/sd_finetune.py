"""``sd-finetune``: fine-tune a Stable Diffusion UNet on the real images and their label captions, then sample
from the fine-tuned weights with the same captions.

The DeepFashion attribute study fine-tuned Stable Diffusion v1-1 for 1,500 steps on the images of the rare
classes, captioned "A person wearing {attributes} clothes", and generated with the same captions. Training
follows diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``: ε- (or v-) prediction MSE
on VAE latents, text encoder and VAE frozen, the UNet trained fully or through a LoRA adapter (peft), in the
shared accelerate loop of :mod:`~synthaug.generators.diffusion_training` (mixed precision, gradient accumulation,
``accelerate launch`` data parallelism: ``batch_size`` is the batch of all processes together, each trains its rows).

The training set is first written in the synthetic-store format (``images/*.png`` + ``metadata.jsonl`` with
``file_name`` and ``text``), which diffusers' own ``train_text_to_image.py --train_data_dir`` also reads.
VAE latents and text embeddings of that set are computed once, since both encoders are frozen. Step ``s``
draws its images, latent samples, noise and timesteps from a generator seeded by (seed, s), so a run resumed
from ``workdir/checkpoints/step-N`` continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2

from synthaug.data.schema import LabeledImages
from synthaug.generators.configs import SDFinetuneConfig
from synthaug.generators.base import register_generator
from synthaug.train.checkpoint import MODEL_INFO, StepCheckpoints, recover_model_dir
from synthaug.generators.diffusion_training import (
    BatchShare, DiffusionTraining, checked_main_first, denoising_target, make_accelerator, train_diffusion,
)
from synthaug.data.captions import caption
from synthaug.generators.sd_common import check_precision, dtype_kwargs, load_pipeline
from synthaug.generators.sd_text2img import SDText2ImgGenerator
from synthaug.utils import atomic_write, derive_seed, read_json, write_json
from synthaug.errors import SettingError, MissingFileError

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
_TRAINING_FIELDS = (
    "model", "mode", "classes", "prompt_template", "train_steps", "learning_rate", "lr_warmup_steps",
    "batch_size", "gradient_accumulation_steps", "resolution", "lora_rank", "lora_alpha",
    "lora_target_modules", "mixed_precision", "ema", "ema_decay", "max_grad_norm",
)




# ------------------------------------------------------------------------------------------ training data
def export_captioned_images(images: LabeledImages, captions: Sequence[str], root: str | Path) -> Path:
    """Writes images and captions as ``root/images/<k>.png`` + ``root/metadata.jsonl``.

    Each line has ``file_name`` and ``text`` (the columns diffusers' ``train_text_to_image.py`` and
    ``datasets.load_dataset("imagefolder")`` read) plus the source ``id`` and ``labels``. A folder already
    holding the same ids and captions is left as is; otherwise it is rewritten (built beside it, then
    renamed).

    Returns:
        ``root``.

    Raises:
        ValueError: if ``captions`` and ``images`` differ in length or there are no images.
    """
    root = Path(root)
    if len(captions) != len(images):
        raise SettingError(f"Got {len(captions)} captions for {len(images)} images.")
    if not len(images):
        raise SettingError("No images to export.")
    records = [{"file_name": f"images/{k:06d}.png", "text": text, "id": images.ids[k],
                "labels": images.schema.names(images.labels[k])} for k, text in enumerate(captions)]
    if (root / "metadata.jsonl").is_file() and _read_metadata(root) == records:
        return root
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for k, rec in enumerate(records):
        images.image(k).convert("RGB").save(tmp / rec["file_name"], format="PNG")
    with atomic_write(tmp / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in records)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def _read_metadata(root: Path) -> list[dict]:
    path = root / "metadata.jsonl"
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "file_name" not in rec or "text" not in rec:
                raise SettingError(f"{path} line {lineno} lacks 'file_name' or 'text'; every line needs both.")
            records.append(rec)
    return records


@dataclass
class TrainingTensors:
    """A captioned image folder encoded once by the frozen VAE and text encoder.

    Attributes:
        latent_mean, latent_std: the VAE posterior of each image (N, C, h, w), unscaled.
        text_embeddings: the text encoder's last hidden states per distinct caption (U, L, D).
        caption_index: for each image, its caption's row in ``text_embeddings`` (N,).
        scaling_factor: the VAE's latent scaling factor.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    text_embeddings: torch.Tensor
    caption_index: torch.Tensor
    scaling_factor: float

    def __len__(self) -> int:
        return len(self.caption_index)

    def sample(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents z ~ q(z | x) and text embeddings for the images ``idx``."""
        eps = torch.randn(self.latent_mean[idx].shape, generator=generator)
        latents = (self.latent_mean[idx] + self.latent_std[idx] * eps) * self.scaling_factor
        return latents, self.text_embeddings[self.caption_index[idx]]


@torch.no_grad()
def encode_training_data(pipe: DiffusionPipeline, data_dir: str | Path, *, resolution: int,
                         batch_size: int = 8) -> TrainingTensors:
    """Encodes a ``file_name`` + ``text`` folder with ``pipe``'s VAE and text encoder.

    Images are resized (shorter side) and centre-cropped to ``resolution``, scaled to [-1, 1], as in
    diffusers' ``train_text_to_image.py``.
    """
    data_dir = Path(data_dir)
    records = _read_metadata(data_dir)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    transform = v2.Compose([v2.ToImage(), v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
    means, stds = [], []
    for start in range(0, len(records), batch_size):
        batch = []
        for rec in records[start : start + batch_size]:
            with Image.open(data_dir / rec["file_name"]) as im:
                batch.append(transform(im.convert("RGB")))
        x = torch.stack(batch).to(vae.device, vae.dtype)
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    texts = list(dict.fromkeys(rec["text"] for rec in records))
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    embeddings = text_encoder(ids.to(text_encoder.device), return_dict=False)[0].float().cpu()
    return TrainingTensors(
        latent_mean=torch.cat(means), latent_std=torch.cat(stds), text_embeddings=embeddings,
        caption_index=torch.tensor([texts.index(rec["text"]) for rec in records]),
        scaling_factor=float(vae.config.scaling_factor))


def diffusion_loss(
    unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
) -> torch.Tensor:
    """The denoising objective of Ho et al. (2020) on latents: MSE between the UNet's prediction and its
    target for the scheduler's ``prediction_type`` (:func:`denoising_target`: the noise, the clean latents, or the
    velocity as in SD 2.x)."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)  # 1. forward process q(z_t | z_0)
    target = denoising_target(noise_scheduler.config.prediction_type, latents, noise, timesteps,  # 2. target
                              noise_scheduler)
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]  # 3. prediction
    return F.mse_loss(pred.float(), target.float())


# ------------------------------------------------------------------------------------------ generator
@register_generator("sd-finetune")
class SDFinetuneGenerator(SDText2ImgGenerator):
    """Fine-tunes an SD 1.x/2.x UNet (LoRA or full) on captioned real images; samples like sd-text2img."""

    config_class = SDFinetuneConfig
    config: SDFinetuneConfig
    distributed_fit = True  # every process trains its share of each batch
    pseudo_control = ("samples of the fine-tuned pipeline from the empty prompt (same guidance and negative "
                      "prompt), labelled by the real-only classifier")

    @property
    def model_dir(self) -> Path:
        return Path(self.config.checkpoint) if self.config.checkpoint else self.workdir / "model"

    def training_fingerprint(self) -> dict[str, Any]:
        """The config fields that decide the fine-tuned weights (kept with checkpoints and the model)."""
        return self.config.model_dump(mode="json", include=set(_TRAINING_FIELDS))

    def is_fitted(self) -> bool:
        """True when ``model_dir`` holds a complete fine-tuned model (for this config, unless it is a given
        ``checkpoint``)."""
        if not self.config.checkpoint:
            recover_model_dir(self.model_dir)
        info_path = self.model_dir / MODEL_INFO
        if not info_path.is_file():
            return False
        if self.config.checkpoint:
            return True
        return read_json(info_path).get("training") == self.training_fingerprint()

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, real: LabeledImages) -> None:
        """Exports the chosen images with their captions to ``workdir/train_data``, fine-tunes on them and
        saves the weights to ``workdir/model``; resumes from the latest checkpoint after an interruption.

        Raises:
            ValueError: for unknown ``classes``, no matching images, or a non-SD-1.x/2.x checkpoint.
            FileNotFoundError: if the base checkpoint cannot be loaded.
        """
        if self.config.checkpoint or checked_main_first(self.is_fitted, self.device):
            return
        subset = self._training_images(real)
        captions = [caption(self.schema, subset.labels[k], self.prompt_template) for k in range(len(subset))]
        accelerator = self._accelerator()
        with accelerator.main_process_first():  # the others then find the folder written and leave it
            data_dir = export_captioned_images(subset, captions, self.workdir / "train_data")
        self.train(data_dir, accelerator=accelerator)

    def _training_images(self, real: LabeledImages) -> LabeledImages:
        classes = self.config.classes
        if classes is None:
            return real
        keys: dict[str, tuple[int, int]] = {}
        for g, group in enumerate(self.schema.groups):
            for c, name in enumerate(group.classes):
                keys[self.schema.class_key(g, c)] = keys[f"{group.name}={name}"] = (g, c)
                keys.setdefault(name, (g, c))
        unknown = [name for name in classes if name not in keys]
        if unknown:
            raise SettingError(f"generator.params.classes names unknown classes {unknown}; "
                             f"known: {sorted(keys)}.")
        wanted = [keys[name] for name in classes]
        keep = [k for k in range(len(real)) if any(real.labels[k, g] == c for g, c in wanted)]
        if not keep:
            raise SettingError(f"No training images have the classes {classes} (generator.params.classes).")
        return real.subset(keep)

    def train(self, data_dir: str | Path, *, accelerator: Accelerator | None = None) -> None:
        """Fine-tunes on a folder of images + ``metadata.jsonl`` (``file_name``, ``text``) and saves the
        weights to ``workdir/model``, resuming from ``workdir/checkpoints`` if a run was interrupted. Under
        ``accelerate launch`` every process calls it and trains its share of each batch."""
        c = self.config
        accelerator = accelerator or self._accelerator()
        BatchShare(0, accelerator.num_processes).check(c.batch_size, "generator.params.batch_size")
        weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[c.mixed_precision]
        pipe = load_pipeline(c.model, device=accelerator.device, pipeline=c.pipeline, dtype="fp32",
                             local_files_only=c.local_files_only)
        sd_1_or_2 = isinstance(getattr(pipe, "unet", None), UNet2DConditionModel) and \
            getattr(pipe, "text_encoder_2", None) is None
        if not sd_1_or_2:
            raise SettingError(f"generator.params.model={c.model!r} is a {type(pipe).__name__}; sd-finetune "
                             "trains SD 1.x/2.x pipelines (one CLIP text encoder and a "
                             "UNet2DConditionModel).")
        resolution = c.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if weight_dtype != torch.float32:  # frozen encoders in the mixed-precision dtype, as in diffusers'
            pipe.vae.to(dtype=weight_dtype)
            pipe.text_encoder.to(dtype=weight_dtype)
        data = encode_training_data(pipe, data_dir, resolution=resolution)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        unet = self._trainable_unet(pipe.unet, weight_dtype)
        del pipe  # the frozen encoders are no longer needed

        params = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.resolved_learning_rate, betas=(0.9, 0.999),
                                      weight_decay=1e-2, eps=1e-8)  # diffusers' example defaults
        # the whole batch is split over the processes, so the schedule counts optimizer updates, whatever their number
        lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=c.lr_warmup_steps)

        def loss(model, step: int, g: torch.Generator, share: BatchShare) -> torch.Tensor:
            idx = torch.randint(0, len(data), (c.batch_size,), generator=g)  # 1. the whole batch's draws
            latents, text = data.sample(idx, g)
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (c.batch_size,), generator=g)
            dev = accelerator.device
            mine = [share.take(x).to(dev) for x in (latents, text, noise, t)]  # 2. this process's rows
            return share.weight(diffusion_loss(model, noise_scheduler, *mine), c.batch_size)

        training = DiffusionTraining(
            model=unet, optimizer=optimizer, lr_schedule=lr_schedule, loss=loss, params=params,
            # micro-step draws as single-process runs drew them before #10 (the last 0 was the process index)
            draw_seed=lambda step, micro: derive_seed(self.seed, "sd-finetune", step, micro, 0),
            ema=EMAModel(params, decay=c.ema_decay) if c.ema else None, max_grad_norm=c.max_grad_norm,
            gradient_accumulation_steps=c.gradient_accumulation_steps,
            write_checkpoint=self._write_checkpoint, read_checkpoint=self._read_checkpoint,
            write_model=lambda folder, model, ema: self._save_final(folder, model, ema),
            checkpoint_info={"training": self.training_fingerprint()}, check_checkpoint=self._check_resumable)
        train_diffusion(training, accelerator, train_steps=c.train_steps, checkpoint_every=c.checkpoint_every,
                        checkpoints=StepCheckpoints(self.workdir / "checkpoints"), model_dir=self.workdir / "model",
                        progress=self.progress, desc=f"fine-tune sd ({c.mode})")
        self._pipe = None

    def _accelerator(self) -> Accelerator:
        c = self.config
        return make_accelerator(c.mixed_precision, self.device, field="generator.params.mixed_precision",
                                gradient_accumulation_steps=c.gradient_accumulation_steps)

    def _trainable_unet(self, unet: UNet2DConditionModel, weight_dtype: torch.dtype) -> UNet2DConditionModel:
        """LoRA: frozen base weights (in ``weight_dtype``) plus an fp32 adapter; full: all weights, fp32."""
        c = self.config
        if c.mode == "full":
            unet.requires_grad_(True)
        else:
            unet.requires_grad_(False)
            if weight_dtype != torch.float32:
                unet.to(dtype=weight_dtype)
            cuda = [unet.device.index or 0] if unet.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # a seeded adapter initialisation; global RNG untouched
                torch.manual_seed(derive_seed(self.seed, "sd-finetune-lora-init"))
                unet.add_adapter(LoraConfig(
                    r=c.lora_rank, lora_alpha=c.lora_alpha or c.lora_rank, init_lora_weights="gaussian",
                    target_modules=list(c.lora_target_modules)))
            cast_training_params(unet, dtype=torch.float32)
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return unet

    # ------------------------------------------------------------------------------------------ checkpoints
    def _check_resumable(self, folder: Path, state: dict) -> None:
        """Refuses a checkpoint written with other training settings (resuming would mix two trainings)."""
        if state.get("training") != self.training_fingerprint():
            saved = state.get("training", {})
            changed = sorted(k for k, v in self.training_fingerprint().items() if saved.get(k) != v)
            raise SettingError(f"{folder} was trained with other settings (changed: {changed}). Delete "
                               f"{folder.parent} to start over, or use another workdir.")
        log.info("Resuming sd-finetune from %s (step %d).", folder, state["step"])

    @staticmethod
    def _write_checkpoint(folder: Path, unet: UNet2DConditionModel, ema: EMAModel | None) -> None:
        """The trainable weights (the LoRA adapter, or the whole UNet) and the EMA's, as safetensors."""
        trainable = {n: p.detach().contiguous().cpu() for n, p in unet.named_parameters() if p.requires_grad}
        save_file(trainable, folder / "trainable.safetensors")
        if ema is not None:
            ema_state = ema.state_dict()
            shadow = ema_state.pop("shadow_params")
            save_file({str(i): t.contiguous().cpu() for i, t in enumerate(shadow)}, folder / "ema.safetensors")
            write_json(folder / "ema.json", ema_state)

    @staticmethod
    def _read_checkpoint(folder: Path, unet: UNet2DConditionModel, ema: EMAModel | None) -> None:
        trainable = load_file(folder / "trainable.safetensors")
        result = unet.load_state_dict(trainable, strict=False)
        wanted = {n for n, p in unet.named_parameters() if p.requires_grad}
        if result.unexpected_keys or wanted - set(trainable):
            raise SettingError(f"{folder}/trainable.safetensors does not match the model being trained; "
                               f"delete {folder.parent} to start over.")
        if ema is not None and (folder / "ema.safetensors").is_file():
            shadow = load_file(folder / "ema.safetensors")
            # checkpoints written before the shared training loop kept the EMA's counters in state.json
            counters = (read_json(folder / "ema.json") if (folder / "ema.json").is_file()
                        else read_json(folder / "state.json")["ema"])
            ema.load_state_dict({**counters, "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})

    def _save_final(self, folder: Path, unet: UNet2DConditionModel, ema: EMAModel | None) -> None:
        """Writes the fine-tuned model into ``folder`` (EMA weights already in ``unet``): the LoRA adapter as
        diffusers saves it, or the full UNet; :data:`MODEL_INFO` last."""
        c = self.config
        folder.mkdir(parents=True, exist_ok=True)  # the training loop hands an empty one
        if c.mode == "lora":
            lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            StableDiffusionPipeline.save_lora_weights(
                folder, unet_lora_layers=lora, weight_name=LORA_WEIGHTS, safe_serialization=True,
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
        else:
            unet.save_pretrained(folder / "unet", safe_serialization=True)
        write_json(folder / MODEL_INFO, {"generator": self.name, "mode": c.mode, "base_model": c.model,
                                         "schema": self.schema.to_dict(),
                                         "training": self.training_fingerprint()})

    # ------------------------------------------------------------------------------------------ sampling
    def _load_pipeline(self) -> DiffusionPipeline:
        """The base pipeline with the fine-tuned weights: a LoRA adapter on its UNet, or the full UNet."""
        c = self.config
        if not self.config.checkpoint:
            recover_model_dir(self.model_dir)
        info_path = self.model_dir / MODEL_INFO
        if not info_path.is_file():
            raise MissingFileError(
                f"No fine-tuned sd-finetune model in {self.model_dir} (looked for {MODEL_INFO}); run fit "
                "first, or set generator.params.checkpoint to an earlier run's workdir/model.")
        info = read_json(info_path)
        if info["mode"] == "full":
            dtype = check_precision(self.precision, self.device)
            unet = UNet2DConditionModel.from_pretrained(self.model_dir / "unet", **dtype_kwargs(dtype))
            return load_pipeline(c.model, device=self.device, pipeline=c.pipeline, dtype=self.precision,
                                 local_files_only=c.local_files_only, unet=unet)
        pipe = super()._load_pipeline()
        pipe.load_lora_weights(self.model_dir, weight_name=LORA_WEIGHTS)
        return pipe

    def provenance(self) -> dict[str, Any]:
        info = {"finetune_mode": self.config.mode, "checkpoint": str(self.model_dir),
                "train_steps": self.config.train_steps}
        return {**super().provenance(), **info}
