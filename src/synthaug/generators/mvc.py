"""``mvc``: Mixing Visual Concepts (Al Rahat & Venkateswara, 2024, arXiv:2412.15358).

1. Each real image gets a caption, prefixed "This is an image of <class>"; ``caption_source`` says where
   the rest comes from: a BLIP-2 captioner (``blip2``, the study's), the data's own per-image captions
   (``data``, e.g. a manifest caption column), or the labels alone (``labels``). With ``labels`` a class's
   captions are all alike and Algorithm 1 copies identical values, i.e. the splicing does nothing (a warning
   says so at run time); diversity then comes only from the noise and, fine-tuned, the conditioning image.
2. Each caption becomes a CLIP text embedding e ∈ R^{m×d} (the pipeline's text encoder, last hidden state,
   m = the tokenizer's max length); they are stored in fp16, one file per class, in ``workdir/text_embeds/``,
   and read class by class when used, so no process holds every class's embeddings.
3. Per plan item, Algorithm 1 (:func:`~synthaug.generators.embedding_splice.splice_embeddings`) splices embeddings
   of the item's class into a new one, passed as ``prompt_embeds`` with the empty prompt's embedding as
   ``negative_prompt_embeds`` for classifier-free guidance.
4. ``mode`` (the study compares both): ``pretrained`` samples a text-to-image Stable Diffusion pipeline
   conditioned on the spliced embedding alone; ``finetuned`` first fine-tunes it InstructPix2Pix-style
   (Brooks et al., 2023; diffusers' ``train_instruct_pix2pix.py``): the UNet gets 4 more input channels for
   the VAE latent of a random image of the same class, and learns to denoise a real image given that image
   and a spliced embedding of its class. Sampling then conditions on a random same-class image plus a spliced
   embedding through ``StableDiffusionInstructPix2PixPipeline``.

Every random choice for an item (start embedding, rows, columns, conditioning image, noise) comes from the
item's seed; training draws come from (seed, step), so a resumed run continues exactly where it stopped, and
under ``accelerate launch`` each process trains its rows of that step's batch
(:mod:`~synthaug.generators.diffusion_training`).

Every mvc condition is a caption embedding that names its class, so there are no class-agnostic mvc samples:
``pseudo_control`` is None and unlabelled items are refused (the runner leaves the pseudo-labelled control out).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler, DiffusionPipeline, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.optimization import get_scheduler
from PIL import Image
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages
from synthaug.generators.configs import MVCConfig
from synthaug.generators.base import Generated, Generator, register_generator
from synthaug.train.checkpoint import MODEL_INFO, StepCheckpoints, check_model_info, recover_model_dir
from synthaug.generators.diffusion_training import (
    BatchShare, DiffusionTraining, denoising_target, make_accelerator, process_state, train_diffusion,
)
from synthaug.data.captions import caption, check_template
from synthaug.generators.embedding_splice import splice_embeddings
from synthaug.generators.sd_common import (
    Precision, SchedulerName, item_generators, load_pipeline, optimize_for_inference, resolve_checkpoint,
    set_scheduler,
)
from synthaug.generators.real_images import class_pools, load_real_images, pick_sources, save_real_images
from synthaug.plan import PlanItem
from synthaug.torch_utils import resolve_precision
from synthaug.utils import derive_seed, read_json, write_json
from synthaug.errors import SettingError, MissingFileError

log = logging.getLogger(__name__)




def add_image_channels(unet: UNet2DConditionModel, extra: int = 4) -> UNet2DConditionModel:
    """Widens ``unet.conv_in`` by ``extra`` input channels for an image-condition latent (in place).

    InstructPix2Pix's initialisation (diffusers' ``train_instruct_pix2pix.py``): the new input channels get
    zero weights and the old ones keep theirs, so the UNet computes exactly what it did before until
    training moves the new weights. The old bias is kept too (the script leaves it freshly initialised).
    """
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(old.weight.device, old.weight.dtype)
    unet.register_to_config(in_channels=old.in_channels + extra)
    return unet


def instruct_pix2pix_loss(
    unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, latents: torch.Tensor,
    image_latents: torch.Tensor, text_embeds: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
) -> torch.Tensor:
    """The denoising loss of an image-conditioned UNet (Brooks et al., 2023, Eq. 2).

    1. forward process: z_t = add_noise(z_0, ε, t);
    2. target (:func:`denoising_target`): ε, z_0, or v = α_t ε − σ_t z_0 for v-prediction checkpoints (SD 2.x);
    3. the UNet sees [z_t, image latent] concatenated on channels and the text embedding; MSE to the target.
    """
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = denoising_target(noise_scheduler.config.prediction_type, latents, noise, timesteps, noise_scheduler)
    pred = unet(torch.cat([noisy, image_latents], dim=1), timesteps, text_embeds).sample
    return F.mse_loss(pred.float(), target.float())


def blip2_captions(
    captioner: str, images: LabeledImages, *, device: torch.device, dtype: torch.dtype,
    local_files_only: bool, max_new_tokens: int, batch_size: int = 16, progress: bool = True,
) -> list[str]:
    """One BLIP-2 caption per image (``Blip2ForConditionalGeneration.generate`` with no text prompt).

    Raises:
        FileNotFoundError: if the captioner cannot be found or loaded; the message says how to provide it.
    """
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    path = Path(captioner).expanduser()
    hint = ("Give a folder saved with save_pretrained (Blip2Processor + Blip2ForConditionalGeneration) or "
            "a hub id such as 'Salesforce/blip2-opt-2.7b' that is cached (HF_HOME) or reachable; or leave "
            "generator.params.captioner unset to caption from the labels alone.")
    if captioner.startswith(("/", ".", "~")) and not path.is_dir():
        raise MissingFileError(f"generator.params.captioner={captioner!r}: no such folder "
                                f"(resolved to {path.resolve()}). {hint}")
    try:
        processor = Blip2Processor.from_pretrained(captioner, local_files_only=local_files_only)
        model = Blip2ForConditionalGeneration.from_pretrained(
            captioner, dtype=dtype, local_files_only=local_files_only).to(device).eval()
    except OSError as e:
        raise MissingFileError("Could not load the BLIP-2 captioner "
                                f"generator.params.captioner={captioner!r}: {e}. {hint}") from e
    out: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc="caption (BLIP-2)", unit="batch",
                      disable=not progress):
        batch = [images.image(i) for i in range(start, min(start + batch_size, len(images)))]
        inputs = processor(images=batch, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        out += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return out


@torch.no_grad()
def encode_text(pipe: DiffusionPipeline, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """CLIP text embeddings (n, m, d): the text encoder's last hidden state over max-length padded tokens,
    as Stable Diffusion pipelines and its training scripts compute them."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids = pipe.tokenizer(list(texts[start : start + batch_size]), padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].float().cpu())
    return torch.cat(out)


def _class_key(label: Sequence[int]) -> str:
    return "class/" + ",".join(str(int(i)) for i in label)


EMBEDS = "text_embeds"  # folder of the caption embeddings: one safetensors file per class, plus the empty prompt
EMBED_BATCH = 64  # captions per text-encoder call while embedding
CACHED_CLASSES = 8  # classes whose embeddings a process keeps in memory (fp32)


def _embeds_file(folder: Path, key: str) -> Path:
    return folder / f"{key.replace('/', '-')}.safetensors"


class ClassEmbeddings:
    """The stored caption embeddings (n, m, d) by class key (and ``"empty"``, the empty prompt's): a class's fp16
    file is read (memory-mapped) when the class is asked for, and only the ``CACHED_CLASSES`` most recently used
    are kept, in fp32. Plans list items class by class, so a process holds a few classes, never all."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with safe_open(_embeds_file(self.folder, key), framework="pt") as f:
            tensor = f.get_tensor("embeds").float()
        self._cache[key] = tensor
        if len(self._cache) > CACHED_CLASSES:
            self._cache.popitem(last=False)
        return tensor


@register_generator("mvc")
class MVCGenerator(Generator):
    """Stable Diffusion conditioned on MVC-spliced caption embeddings (and, fine-tuned, a same-class image)."""

    config_class = MVCConfig
    config: MVCConfig
    distributed_fit = True  # every process trains its share of each batch
    pseudo_control = None  # every condition names its class (see the module docstring)
    _pipe: DiffusionPipeline | None = None
    _real: LabeledImages | None = None
    _embeds: ClassEmbeddings | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_template(self.schema, self.config.caption_prefix)
        if self.config.caption_template is not None:
            check_template(self.schema, self.config.caption_template)
        if self.config.mode == "pretrained" and self.config.checkpoint is not None:
            raise SettingError("generator.params.checkpoint is a fine-tuned mvc model, used with mode "
                             "'finetuned'; for mode 'pretrained' name the pipeline in "
                             "generator.params.model.")
        c = self.config
        if c.caption_source == "blip2" and c.captioner is None:
            raise SettingError("generator.params.caption_source='blip2' needs generator.params.captioner (a "
                               "BLIP-2 folder or hub id, e.g. 'Salesforce/blip2-opt-2.7b').")
        if c.captioner is not None and c.caption_source in ("labels", "data"):
            raise SettingError(f"generator.params.captioner={c.captioner!r} is used only with caption_source "
                               f"'blip2' (or 'auto'), but caption_source is {c.caption_source!r}; unset one.")

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def model_dir(self) -> Path:
        return Path(self.config.checkpoint) if self.config.checkpoint else self.workdir / "model"

    @property
    def precision(self) -> Precision:
        if self.config.dtype == "auto":
            return "fp16" if self.device.type == "cuda" else "fp32"
        return self.config.dtype

    @property
    def train_precision(self) -> str:
        return resolve_precision(self.config.train_precision, self.device, what="generator.params.train_precision")

    def caption_source(self, data_captions: Sequence[str] | None) -> str:
        """The caption source in use: ``caption_source``, with "auto" resolved (see :class:`MVCConfig`).

        Raises:
            SettingError: for "data" when the real data carries no captions.
        """
        c = self.config
        if c.caption_source == "auto":
            return "blip2" if c.captioner else "data" if data_captions is not None else "labels"
        if c.caption_source == "data" and data_captions is None:
            raise SettingError("generator.params.caption_source='data' needs per-image captions with the real "
                               "data (a caption column in the data manifest, data.caption_column), but the "
                               "training images have none. Add one, or use caption_source 'blip2'.")
        return c.caption_source

    def _embedding_record(self) -> dict[str, Any] | None:
        """What the stored embeddings depend on: the real data, the captions and the text encoder."""
        real = self.workdir / "real" / "real.json"
        if not real.is_file():
            return None
        d = read_json(real)
        c = self.config
        source = self.caption_source(d.get("captions"))
        return {"data": derive_seed(json.dumps([d["ids"], d["labels"]])), "model": c.model,
                "caption_source": source, "captioner": c.captioner if source == "blip2" else None,
                "data_captions": derive_seed(json.dumps(d.get("captions"))) if source == "data" else None,
                "caption_prefix": c.caption_prefix, "caption_template": c.caption_template}

    def _embeddings_current(self) -> bool:
        meta = self.workdir / "text_embeds.json"
        return (meta.is_file() and (self.workdir / EMBEDS / "empty.safetensors").is_file()
                and read_json(meta)["record"] == self._embedding_record())

    def is_fitted(self) -> bool:
        """True when the caption embeddings match the data and config and (finetuned) ``model_dir`` holds a
        model: a given ``checkpoint``, or one this workdir trained with the current training settings."""
        if not self._embeddings_current():
            return False
        if self.config.mode == "pretrained":
            return True
        if self.config.checkpoint:
            return (self.model_dir / "model_index.json").is_file()
        recover_model_dir(self.model_dir)
        path = self.model_dir / MODEL_INFO
        if not ((self.model_dir / "model_index.json").is_file() and path.is_file()):
            return False
        info, wanted = read_json(path), self.config.training_part()
        # models written before the "training" record: compare the same fields of their full config
        saved = info.get("training") or {k: info.get("config", {}).get(k) for k in wanted}
        return saved == wanted

    # ---------------------------------------------------------------------------------------------- fit
    def _base_pipeline(self, dtype: Precision = "fp32") -> DiffusionPipeline:
        """The ``model`` pipeline; a Stable Diffusion 1.x/2.x one (one CLIP text encoder, a UNet, a VAE).

        Raises:
            FileNotFoundError: if it cannot be found; ValueError: if it is another kind of pipeline.
        """
        c = self.config
        pipe = load_pipeline(c.model, device=self.device, pipeline="DiffusionPipeline", dtype=dtype,
                             local_files_only=c.local_files_only)
        if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionInstructPix2PixPipeline)):
            raise SettingError(f"generator.params.model={c.model!r} is a {type(pipe).__name__}; mvc splices "
                             "the CLIP text embeddings of Stable Diffusion 1.x/2.x (StableDiffusionPipeline, "
                             "or an InstructPix2Pix one). Use such a checkpoint, e.g. "
                             "stable-diffusion-v1-5/stable-diffusion-v1-5.")
        return pipe

    def captions(self, real: LabeledImages) -> list[str]:
        """The caption of each real image: "<prefix>, <BLIP-2 caption, the data's caption, or label template>"."""
        c = self.config
        source = self.caption_source(getattr(real, "captions", None))
        prefixes = [caption(self.schema, label, c.caption_prefix) for label in real.labels.tolist()]
        if source == "blip2":
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            bodies = blip2_captions(c.captioner, real, device=self.device, dtype=dtype,
                                    local_files_only=c.local_files_only,
                                    max_new_tokens=c.caption_max_new_tokens, progress=self.progress)
        elif source == "data":
            bodies = [str(text).strip() for text in real.captions]
        elif c.caption_template is not None:
            bodies = [caption(self.schema, label, c.caption_template) for label in real.labels.tolist()]
        else:
            bodies = [""] * len(real)
        return [f"{p}, {b}" if b else p for p, b in zip(prefixes, bodies)]

    def fit(self, real: LabeledImages) -> None:
        """Records the real images, captions and embeds them per class, and (finetuned) trains the model.

        Raises:
            FileNotFoundError: if the base model or the captioner cannot be loaded.
        """
        if len(real) == 0:
            raise SettingError("mvc needs real training images to caption and condition on, but got none.")
        processes = process_state(self.device)  # under accelerate launch: the main process records and embeds
        base = self._prepare_conditions(real) if processes.is_main_process else None
        processes.wait_for_everyone()
        self._real = self._embeds = None
        if self.config.mode == "finetuned":
            if self.config.checkpoint is not None:
                self._check_checkpoint()  # sample from it; nothing to train
            elif not self.is_fitted():
                self._train(base or self._base_pipeline())

    def _prepare_conditions(self, real: LabeledImages) -> DiffusionPipeline | None:
        """Records the real images and (when they or the captions changed) embeds the captions, dropping the
        model trained on the old ones. Returns the base pipeline if it was loaded for that."""
        save_real_images(real, self.workdir / "real")
        self._real = self._embeds = None
        if self.caption_source(getattr(real, "captions", None)) == "labels":
            log.warning(
                "mvc: caption_source is 'labels' (no captioner, no captions with the data), so all captions "
                "of a class are identical and MVC's embedding splicing (Algorithm 1) does nothing. For "
                "embeddings that differ, give per-image captions with the data (a manifest caption column; "
                "generator.params.caption_source: data) or a BLIP-2 captioner (generator.params.captioner).")
        if self._embeddings_current():
            if self.config.checkpoint is None:
                recover_model_dir(self.model_dir)  # an interrupted model swap: repaired by this process alone
            return None
        captions = self.captions(real)  # first: BLIP-2 is freed before the diffusion model loads
        base = self._base_pipeline()
        self._save_embeddings(base, real, captions)
        for stale in (self.workdir / "model", self.workdir / "checkpoints"):
            shutil.rmtree(stale, ignore_errors=True)
        return base

    def _save_embeddings(self, pipe: DiffusionPipeline, real: LabeledImages, captions: list[str]) -> None:
        """Embeds the captions class by class (``EMBED_BATCH`` per encoder call) into one fp16 file per class
        (fp16 halves the disk; ample for CLIP); the record is written last."""
        folder = self.workdir / EMBEDS
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for label, idx in class_pools(real).items():
            texts = [captions[i] for i in idx.tolist()]
            rows = [encode_text(pipe, texts[b : b + EMBED_BATCH]).to(torch.float16)
                    for b in range(0, len(texts), EMBED_BATCH)]
            save_file({"embeds": torch.cat(rows).contiguous()}, _embeds_file(folder, _class_key(label)))
        save_file({"embeds": encode_text(pipe, [""]).to(torch.float16).contiguous()}, _embeds_file(folder, "empty"))
        write_json(self.workdir / "captions.json", dict(zip(real.ids, captions)))
        write_json(self.workdir / "text_embeds.json", {"record": self._embedding_record()})

    def _check_checkpoint(self) -> None:
        """Raises a clear error when ``checkpoint`` names no pipeline folder."""
        resolve_checkpoint(self.config.checkpoint, field="generator.params.checkpoint")
        if not (self.model_dir / "model_index.json").is_file():
            raise MissingFileError(f"generator.params.checkpoint={self.config.checkpoint!r} is not a folder "
                                    "holding model_index.json; give the `model` folder an mvc fit wrote.")
        check_model_info(self.model_dir, self.schema, generator="mvc", field="generator.params.checkpoint")

    def _require_fitted(self) -> None:
        c = self.config
        if not self._embeddings_current():
            raise MissingFileError(
                f"mvc has no caption embeddings in {self.workdir} for this data and config (looked for "
                "real/real.json, text_embeds.json and text_embeds/); run fit(real) first (`synthaug generate` "
                "does).")
        if c.mode == "finetuned" and c.checkpoint is not None:
            self._check_checkpoint()
        elif c.mode == "finetuned" and not self.is_fitted():
            raise MissingFileError(f"No fine-tuned mvc model in {self.model_dir} (looked for "
                                    "model_index.json); run fit(real) with mode 'finetuned' to train it, or "
                                    "set generator.params.checkpoint to a trained one.")

    def _load_data(self) -> tuple[LabeledImages, dict, ClassEmbeddings]:
        """The recorded real images, their class pools and the class embeddings (read lazily)."""
        if self._real is None or self._embeds is None:
            self._real = load_real_images(self.workdir / "real", self.schema)
            self._pools = class_pools(self._real)
            self._embeds = ClassEmbeddings(self.workdir / EMBEDS)
            self._captions = read_json(self.workdir / "captions.json")
        return self._real, self._pools, self._embeds

    def _size(self, pipe: DiffusionPipeline) -> int:
        return self.config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor

    # ---------------------------------------------------------------------------------------------- training
    def _training_batch(self, step: int, vae, empty: torch.Tensor, size: int, num_train_timesteps: int, *,
                        generator: torch.Generator | None = None, share: BatchShare = BatchShare()):
        """This process's ``share`` of step ``step``'s batch: target and condition latents, spliced text embeddings
        (with conditioning dropout), noise and timesteps. Every draw of the whole batch comes from (seed, step)
        (``generator``, if given, is that step's generator), in one order whatever the share."""
        c = self.config
        real, pools, embeds = self._load_data()
        seed = derive_seed(self.seed, "mvc-train", step)
        rng = np.random.default_rng(seed)
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        targets, conditions, texts = [], [], []
        for i in rng.integers(len(real), size=c.batch_size).tolist():
            label = tuple(real.labels[i].tolist())
            targets.append(i)
            conditions.append(int(rng.choice(pools[label])))  # 1. a random image of the same class
            texts.append(splice_embeddings(embeds[_class_key(label)], coarse_steps=c.coarse_steps,
                                           fine_steps=c.fine_steps, rng=rng).embedding)  # 2. Algorithm 1
        targets, conditions, texts = share.take(targets), share.take(conditions), share.take(texts)
        to_pixels = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToImage(),
                                v2.ToDtype(torch.float32, scale=True)])
        pixels = torch.stack([to_pixels(real.image(i).convert("RGB")) for i in targets + conditions]) * 2 - 1
        pixels = pixels.to(self.device, vae.dtype)
        n = len(targets)
        with torch.no_grad():  # 3. latents: sampled for the target, the mode for the condition (the script's)
            posterior = vae.encode(pixels[:n]).latent_dist
            eps = torch.randn((c.batch_size, *posterior.mean.shape[1:]), generator=g)  # the whole batch's draw
            latents = posterior.mean + posterior.std * share.take(eps).to(self.device, posterior.mean.dtype)
            latents = latents * vae.config.scaling_factor
            image_latents = vae.encode(pixels[n:]).latent_dist.mode()
        text = torch.stack(texts).to(self.device)
        # 4. conditioning dropout (Brooks et al., 2023, §3.2.1): drop text, image, or both, each with prob q
        q = c.conditioning_dropout
        u = share.take(torch.rand(c.batch_size, generator=g)).to(self.device)
        text = torch.where((u < 2 * q).view(-1, 1, 1), empty.to(self.device).expand_as(text), text)
        keep_image = ~((u >= q) & (u < 3 * q))
        image_latents = image_latents * keep_image.view(-1, 1, 1, 1).to(image_latents.dtype)
        noise = share.take(torch.randn((c.batch_size, *latents.shape[1:]), generator=g)).to(self.device)
        timesteps = share.take(torch.randint(0, num_train_timesteps, (c.batch_size,), generator=g)).to(self.device)
        return latents, image_latents, text, noise, timesteps

    def _train(self, base: DiffusionPipeline) -> None:
        """Fine-tunes ``base``'s UNet InstructPix2Pix-style; every process trains its share of each batch."""
        c = self.config
        unet, vae = base.unet, base.vae
        noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        if unet.config.in_channels == vae.config.latent_channels:
            add_image_channels(unet, vae.config.latent_channels)
        vae.requires_grad_(False)
        base.text_encoder.requires_grad_(False)
        accelerator = make_accelerator(self.train_precision, self.device, field="generator.params.train_precision")
        BatchShare(0, accelerator.num_processes).check(c.batch_size, "generator.params.batch_size")
        embeds = self._load_data()[2]
        empty, size = embeds["empty"], self._size(base)
        num_timesteps = noise_scheduler.config.num_train_timesteps
        optimizer = torch.optim.AdamW(unet.parameters(), lr=c.learning_rate)

        def loss(model, step: int, g: torch.Generator, share: BatchShare) -> torch.Tensor:
            batch = self._training_batch(step, vae, empty, size, num_timesteps, generator=g, share=share)
            return share.weight(instruct_pix2pix_loss(model, noise_scheduler, *batch), c.batch_size)

        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        training = DiffusionTraining(
            model=unet, optimizer=optimizer, loss=loss, max_grad_norm=c.max_grad_norm,
            lr_schedule=get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=c.lr_warmup_steps),
            draw_seed=lambda step, micro: derive_seed(self.seed, "mvc-train", step),
            write_checkpoint=lambda folder, model, ema: model.save_pretrained(folder / "unet"),
            read_checkpoint=lambda folder, model, ema: model.load_state_dict(
                UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).state_dict()),
            write_model=lambda folder, model, ema: self._write_model(folder, base, model))
        train_diffusion(training, accelerator, train_steps=c.train_steps, checkpoint_every=c.checkpoint_every,
                        checkpoints=StepCheckpoints(self.workdir / "checkpoints"), model_dir=self.model_dir,
                        progress=self.progress, desc="train mvc")
        unet.eval()
        if c.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        self._pipe = None

    def _write_model(self, folder: Path, base: DiffusionPipeline, unet: UNet2DConditionModel) -> None:
        """The fine-tuned InstructPix2Pix pipeline (``base``'s VAE, text encoder and scheduler), as safetensors;
        :data:`MODEL_INFO` last."""
        if self.config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
            scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        write_json(folder / MODEL_INFO, {"generator": "mvc", "schema": self.schema.to_dict(),
                                         "training": self.config.training_part(),
                                         "config": self.config.model_dump(mode="json")})  # last: marks it complete

    # ---------------------------------------------------------------------------------------------- sampling
    def pipeline(self) -> DiffusionPipeline:
        """The sampling pipeline: the base model (pretrained) or the fine-tuned one, loaded once."""
        if self._pipe is None:
            c = self.config
            if c.mode == "pretrained":
                pipe = self._base_pipeline(self.precision)
            else:
                pipe = load_pipeline(str(self.model_dir), device=self.device, dtype=self.precision,
                                     pipeline="StableDiffusionInstructPix2PixPipeline",
                                     field="generator.params.checkpoint")
            set_scheduler(pipe, c.scheduler)
            optimize_for_inference(pipe, channels_last=c.channels_last, compile=c.enable_compile)
            self._pipe = pipe
        return self._pipe

    @property
    def image_conditioned(self) -> bool:
        return isinstance(self.pipeline(), StableDiffusionInstructPix2PixPipeline)

    def condition(self, item: PlanItem) -> tuple[torch.Tensor, int | None, dict[str, Any]]:
        """One item's spliced embedding (m, d), its conditioning image (an index into the real images, or
        None for text-only models) and its manifest fields. Every draw comes from the item's seed."""
        c = self.config
        if item.labels is None:
            raise SettingError(f"Item {item.item_id!r} has no labels, but every mvc condition is a caption "
                               "embedding that names its class, so mvc makes no class-agnostic samples (its "
                               "pseudo-labelled control is left out). Give every plan item labels.")
        real, pools, embeds = self._load_data()
        rng = np.random.default_rng(derive_seed(item.seed, "mvc"))
        # the conditioning image (image-conditioned models); also checks the item's class has real images
        picked = pick_sources(item, real, pools, 1 if self.image_conditioned else 0, rng)
        image = picked[0] if picked else None
        label = tuple(item.labels)
        pool = pools[label]
        start = None  # a planned source id after the conditioning image names the start embedding
        if len(item.source_ids) > len(picked):
            start_id = item.source_ids[len(picked)]
            start = next((k for k, i in enumerate(pool.tolist()) if real.ids[i] == start_id), None)
            if start is None:
                raise SettingError(f"Item {item.item_id!r} names source id {start_id!r}, which is not a real "
                                 f"image of its class {real.schema.names(label)}.")
        spliced = splice_embeddings(embeds[_class_key(label)], coarse_steps=c.coarse_steps,
                                    fine_steps=c.fine_steps, rng=rng, start=start)
        caption_ids = [real.ids[pool[k]] for k in spliced.sources]
        image_ids = [real.ids[image]] if image is not None else []
        # source_ids: the conditioning image, then the start caption's image (what an item re-made from this
        # line needs), then the other captions' images
        info = {"text": self._captions[caption_ids[0]], "caption_source_ids": caption_ids,
                "source_ids": image_ids + caption_ids}
        if image is not None:
            info["condition_image_id"] = real.ids[image]
        return spliced.embedding, image, info

    def check_loadable(self) -> None:
        self._require_fitted()
        self.pipeline()

    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        """One image per item, in item order, with its start caption (``text``) and the real ids used
        (``source_ids``: the conditioning image first, then the caption sources).

        Raises:
            FileNotFoundError: if fit has not run, or a checkpoint cannot be loaded.
            ValueError: if an item has no labels or its class had no real image.
        """
        if not items:
            return []
        c = self.config
        self._require_fitted()
        pipe = self.pipeline()
        conditions = [self.condition(it) for it in items]
        dtype = pipe.unet.dtype
        prompt_embeds = torch.stack([e for e, _, _ in conditions]).to(self.device, dtype)
        negative = self._load_data()[2]["empty"].to(self.device, dtype).expand_as(prompt_embeds)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, guidance_scale=c.guidance_scale,
            num_inference_steps=c.num_inference_steps, generator=item_generators(items), output_type="pil")
        size = self._size(pipe)
        if self.image_conditioned:
            resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
            kwargs.update(image=[resize(self._real.image(i).convert("RGB")) for _, i, _ in conditions],
                          image_guidance_scale=c.image_guidance_scale)
        else:
            kwargs.update(height=size, width=size)
        images = pipe(**kwargs).images
        return [Generated(image, info) for image, (_, _, info) in zip(images, conditions)]

    def provenance(self) -> dict[str, Any]:
        c = self.config
        out = {**super().provenance(), "mode": c.mode, "model": c.model, "caption_source": c.caption_source,
               "captioner": c.captioner, "resolution": c.resolution, "dtype": self.precision}
        if c.mode == "finetuned":
            out["checkpoint"] = str(self.model_dir)
        return out
