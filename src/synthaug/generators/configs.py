"""Typed configs of every generator, as plain data (pydantic only: no torch, no diffusers).

Validating an experiment config and printing ``synthaug --help`` import this module, not the generators.
Each generator module sets ``config_class`` to its class here; :data:`GENERATORS` declares every built-in
generator by name and import path, so its implementation (and torch) is imported only when it is built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synthaug.config_hints import unknown_key_hint
from synthaug.registry import Registry
from synthaug.errors import SettingError

GENERATORS: Registry = Registry("generator", {
    "ddpm": "synthaug.generators.ddpm:DDPMGenerator",
    "sd-text2img": "synthaug.generators.sd_text2img:SDText2ImgGenerator",
    "sd-finetune": "synthaug.generators.sd_finetune:SDFinetuneGenerator",
    "mvc": "synthaug.generators.mvc:MVCGenerator",
    "unclip-augcond": "synthaug.generators.unclip_augcond:UnCLIPAugCondGenerator",
    "pseudo-label": "synthaug.generators.pseudo_label:PseudoLabelGenerator",
    "noise": "synthaug.generators.noise:NoiseGenerator",
    "class-map": "synthaug.generators.class_map:ClassMapGenerator",
})

Precision = Literal["fp32", "bf16", "fp16"]
SchedulerName = Literal["default", "ddim", "pndm", "dpmsolver++", "euler", "euler-ancestral", "ddpm"]
# unCLIP augmented conditioning: the study's baseline, embedding dropout, and Mixup / CutMix in pixel or
# embedding space, each with or without dropout (see synthaug.generators.augcond)
Method = Literal[
    "random-image", "dropout",
    "mixup", "mixup-dropout", "embed-mixup", "embed-mixup-dropout",
    "cutmix", "cutmix-dropout", "embed-cutmix", "embed-cutmix-dropout",
]
METHODS: tuple[str, ...] = get_args(Method)


class GeneratorConfig(BaseModel):
    """Base of every generator config: unknown keys are errors.

    Fields have one of three roles, which decide what a change invalidates (see ``synthaug.runner.context``):
    *training* fields (the default) make the model: changing one retrains it; *sampling* fields
    (``sampling_fields``) only change the images drawn from it: changing one regenerates the synthetic set
    but keeps the model; *performance* fields (``performance_fields``) change neither weights nor images.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    sampling_fields: ClassVar[frozenset[str]] = frozenset()
    performance_fields: ClassVar[frozenset[str]] = frozenset()
    # training or sampling fields added after models and sets were recorded, with the value that behaves as
    # before the field existed: at that value the field is left out of training_part / sampling_part, so earlier
    # models, synthetic sets and stage records still match
    added_fields: ClassVar[dict[str, Any]] = {}

    def training_part(self) -> dict[str, Any]:
        """The fields that make the model (what the generator stage's record protects)."""
        skip = self.sampling_fields | self.performance_fields
        return {k: v for k, v in self.model_dump(mode="json").items()
                if k not in skip and not (k in self.added_fields and v == self.added_fields[k])}

    def sampling_part(self) -> dict[str, Any]:
        """The fields that change the images drawn from a given model (what the synthetic set protects)."""
        return {k: v for k, v in self.model_dump(mode="json").items()
                if k in self.sampling_fields and not (k in self.added_fields and v == self.added_fields[k])}


class FeedbackConfig(BaseModel):
    """Feedback-guided sampling (Askari-Hemmat et al., TMLR 2024): at the chosen sampling steps a classifier
    trained on the long-tailed real data scores the predicted clean image x̂0 of each item, and x̂0 is pushed
    along the gradient (taken w.r.t. x_t, through x̂0) that *raises* the criterion, as classifier guidance
    (Dhariwal & Nichol, 2021) raises log p(y|x): the study's released code steps up its loss and entropy, to draw
    the hard, informative samples a classifier learns most from. A negative ``scale`` steers the other way
    (towards samples the classifier finds easy)."""

    model_config = ConfigDict(extra="forbid")

    # a classifier folder written by synthaug's classifier training (classifier.json + model.safetensors), e.g.
    # <run>/train/real-ce/seed0/model. It must have been trained on the training split only, never the oracle or
    # the judge (which score the result). An arm name ("real-ce") is resolved to its folder by the runner
    # (run_dir/train/<name>/seed<the arm's first seed>/model) before the generator sees it.
    classifier: str
    # what is raised: "loss" = the cross-entropy of the item's class; "entropy" = the entropy of the predicted
    # class distribution; "hardness" = the squared Mahalanobis distance of the classifier's features from the
    # item's class mean among the real training images (one covariance shared by all classes, shrunk towards
    # its mean variance, so classes with 4 images have one). Unlabelled items take no loss or hardness push.
    criterion: Literal["loss", "entropy", "hardness"] = "loss"
    # the push on x̂0 per guided step, as a share of x̂0's pixel range [-1, 1] (root mean square over the image):
    # each item's gradient is rescaled to unit RMS, as the study's code rescales it to the latents' norm; 0 = off
    scale: float = 0.1
    # the guided steps: those at [start, end) of the sampling path (fractions of sampling_steps, counted from
    # the first, pure-noise step; a translation's skipped steps count too) ...
    steps: tuple[float, float] = (0.0, 1.0)
    every: int = Field(1, ge=1)  # ... and, of those, every k-th (the study's code: every 5th of 30 steps)

    @model_validator(mode="after")
    def _check_steps(self) -> "FeedbackConfig":
        start, end = self.steps
        if not 0 <= start <= end <= 1:
            raise ValueError(f"steps must be a range [start, end] of fractions with 0 <= start <= end <= 1, "
                             f"but got {list(self.steps)}; e.g. [0, 0.5] guides the first half of the steps.")
        return self


class DDPMConfig(GeneratorConfig):
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"sampler", "sampling_steps", "timestep_spacing",
                                                            "guidance_scale", "translate_from", "strength",
                                                            "feedback"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "guidance_batching", "channels_last",
                                                              "enable_compile"})
    added_fields: ClassVar[dict[str, Any]] = {"augment": "none", "translate_from": "none", "cbdm_tau": 0.0,
                                              "feedback": None}
    # --- network
    image_size: int | None = None  # None: the training images' own size (must be divisible by 2**(levels-1))
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # one entry per resolution level
    layers_per_block: int = 2
    attention: bool = False  # self-attention blocks at the lowest resolution
    # GroupNorm groups; keep several channels per group: with one channel per group (diffusers' default of 32
    # groups on a 32-channel level) the norm strips every channel's mean and samples get grey backgrounds
    norm_num_groups: int = Field(8, ge=1)
    conditional: bool = True  # False: an unconditional model (for pseudo-labelling)
    # --- training
    train_steps: int = Field(2500, ge=0)
    batch_size: int = Field(64, ge=1)  # images per step, all processes together under accelerate launch
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = 0.0
    label_dropout: float = Field(0.1, ge=0, le=1)  # classifier-free guidance: P(label -> null) in training
    # draw batches with P(image) ∝ 1 / count(its class), so every class is seen equally often; on the demo's
    # MNIST-LT (4-380 images a class) the judge recognised 98.5 % of samples after 300 steps, against 77 %
    # (10-15 % for the two rarest classes) with uniform batches (BENCHMARKS.md "Class-balanced batches")
    class_balanced: bool = True
    # "affine": each training image randomly rotated (±10°), shifted (±10 %) and scaled (0.9-1.1), as the
    # classifier's `digits` preset, no flips; "none": as loaded. On the demo's 300-step budget affine made
    # samples less faithful and no more useful (BENCHMARKS.md "Downstream benchmark"); longer trainings untested
    augment: Literal["none", "affine"] = "none"
    # CBDM (Qin et al., 2023): weight τ of a regulariser pulling each image's prediction for its class towards the
    # prediction for a uniformly drawn class on the same noisy input (weighted t / T), so rare classes borrow the
    # common ones' variety; 0 = off. Costs a second UNet pass per training image. On the demo, 0.25 raised class 9's
    # recall of real test 9s by 0.16-0.19 and few-shot accuracy a little (+0.9 points, filtered, on each of two
    # data draws, 6 classifier seeds), with fewer samples read as their class (BENCHMARKS.md "CBDM"); pair it
    # with a confidence filter
    cbdm_tau: float = Field(0.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, le=1)  # 0 disables EMA
    # autocast for training and sampling; auto = bf16 where the hardware runs it natively, else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    # what the network predicts: v (Salimans & Ho, 2022) or the noise ε (Ho et al., 2020) or x0; measured on
    # the demo, v at 300 steps: 84 % of samples recognised as their class; ε at 600 steps: 12 % (BENCHMARKS.md)
    prediction_type: Literal["v_prediction", "epsilon", "sample"] = "v_prediction"
    checkpoint_every: int = Field(500, ge=1)  # steps between resumable checkpoints
    # --- sampling
    # dpmsolver++ / unipc: multistep ODE solvers for 5-25 steps; ddim; ddpm = ancestral (use 1,000 steps)
    sampler: Literal["dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    sampling_steps: int = Field(20, ge=1)
    # where the sampling steps sit among the training timesteps. "trailing" (and "linspace") start at the last,
    # pure-noise timestep; "leading", DDPMScheduler's default, starts lower (t = 888 of 1000 for DPM-Solver++
    # with 8 steps), where the model expects signal that pure noise does not have: on the demo generator the judge
    # recognised 48 % of 8-step samples with "leading" and 89.5 % with "trailing" (BENCHMARKS.md "Sampling").
    # Lin et al. (2024), "Common diffusion noise schedules and sample steps are flawed", Table 2.
    timestep_spacing: Literal["trailing", "linspace", "leading"] = "trailing"
    guidance_scale: float = Field(2.0, ge=0)  # 1 = plain conditional; 0 = unconditional
    # start from a real training image instead of pure noise (SDEdit, Meng et al., 2022): noise it to `strength`
    # of the sampling path and denoise it as the item's class. "other-classes": a random image of another class,
    # Diff-Mix's inter-class translation (Wang et al., 2024), which lends a rare class the poses, slants and
    # strokes of the common ones; "own-class": one of the item's class (intra-class variation); "none": noise.
    # Unlabelled items (pseudo-label control) start from an image of any class. On the demo's 300-step generator
    # most translations kept their source digit (the judge read 19-56 % per class as the target) and no filtered
    # arm beat sampling from noise (BENCHMARKS.md "Inter-class translation"); pair it with a confidence filter
    # and over-generation
    translate_from: Literal["none", "other-classes", "own-class"] = "none"
    # the share of the sampling steps run from the noised source: 1 = from pure noise, smaller keeps more of it
    strength: float = Field(0.8, gt=0, le=1)
    guidance_batching: bool = True  # one UNet pass on [x, x] for the labelled and null predictions, not two
    # channels-last memory format for sampling; auto: on for fp32 on a CPU, where it measured faster
    channels_last: bool | Literal["auto"] = "auto"
    enable_compile: bool = False  # torch.compile the UNet for sampling (first batch slow while it compiles)
    checkpoint: str | None = None  # a trained model folder to sample from instead of training
    # classifier-feedback guidance of sampling (see FeedbackConfig); None = off. Each guided step costs a backward
    # pass through the UNet and the classifier (BENCHMARKS.md "Feedback-guided sampling cost")
    feedback: FeedbackConfig | None = None

    def sampling_part(self) -> dict[str, Any]:
        part = super().sampling_part()
        if self.translate_from == "none":  # strength applies to translations only
            part.pop("strength", None)
        return part


class SDText2ImgConfig(GeneratorConfig):
    """Sampling knobs. Defaults are Stable Diffusion's own (the diffusers pipeline defaults used by the
    label-caption studies): guidance 7.5, 50 steps, the checkpoint's scheduler (PNDM for SD v1)."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"prompt_template", "negative_prompt", "guidance_scale", "num_inference_steps", "scheduler",
                                "height", "width", "dtype", "feedback"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"local_files_only", "enable_compile", "channels_last"})
    added_fields: ClassVar[dict[str, Any]] = {"feedback": None}

    model: str  # a pipeline folder saved with save_pretrained (has model_index.json) or a hub id
    pipeline: str = "auto"  # "auto" = AutoPipelineForText2Image; or a class, e.g. "StableDiffusionXLPipeline"
    local_files_only: bool = False  # never contact the hub, even for hub ids (as HF_HUB_OFFLINE=1)
    prompt_template: str | None = None  # None: captions.DEFAULT_TEMPLATES (see that module for the fields)
    negative_prompt: str | None = None  # e.g. "blurry, low quality"; None = no negative prompt
    guidance_scale: float = Field(7.5, ge=0)  # classifier-free guidance weight; SD default 7.5; <= 1 disables
    num_inference_steps: int = Field(50, ge=1)  # denoising steps; SD default 50
    scheduler: SchedulerName = "default"  # "default" keeps the checkpoint's sampler (PNDM in SD v1.x)
    height: int | None = Field(None, ge=8, multiple_of=8)  # None: the model's native size (512 for SD 1.x)
    width: int | None = Field(None, ge=8, multiple_of=8)
    # weights' dtype for sampling. "auto": fp16 on CUDA (Stable Diffusion's usual inference dtype; sampling
    # only, so no loss scaling is involved), fp32 on CPU. Not `precision: auto`'s bf16 rule: SD weights are
    # cast, not autocast. bf16 works on both devices.
    dtype: Precision | Literal["auto"] = "auto"
    enable_compile: bool = False  # torch.compile the UNet (GPU; first batch slow while it compiles)
    channels_last: bool = False  # channels-last memory format for UNet and VAE (GPU speed-up)
    # classifier-feedback guidance of sampling (see FeedbackConfig); None = off. Through the pipeline's
    # callback_on_step_end: each guided step costs one more UNet pass and a VAE decode with its backward pass, and
    # `scale` is measured in the (scaled) latents, whose spread is about 1. Stable Diffusion 1.x/2.x pipelines only
    feedback: FeedbackConfig | None = None


class SDFinetuneConfig(SDText2ImgConfig):
    """Fine-tuning knobs, then sd-text2img's sampling knobs. Defaults: the DeepFashion study (SD v1-1, 1,500
    steps, rare classes, label captions) where it says, else diffusers' text-to-image training examples."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"negative_prompt", "guidance_scale", "num_inference_steps", "scheduler", "height", "width",
                                "dtype", "feedback"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"local_files_only", "enable_compile", "channels_last", "checkpoint_every",
                                   "gradient_checkpointing"})

    # --- what to train on
    classes: list[str] | None = None  # class names ("floral" or "pattern=floral") to train on; None = all
    # --- how
    mode: Literal["lora", "full"] = "lora"  # LoRA adapter on the UNet's attention, or the whole UNet
    train_steps: int = Field(1500, ge=0)  # optimizer updates; the study fine-tuned for 1,500 steps
    learning_rate: float | None = Field(None, gt=0)  # None: 1e-4 for lora, 1e-5 for full (diffusers' READMEs)
    lr_warmup_steps: int = Field(0, ge=0)  # constant learning rate after a linear warm-up
    # images per micro-batch, all processes together under accelerate launch (diffusers README examples: 1 ...)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)  # ... with 4 accumulation steps
    resolution: int | None = Field(None, ge=8, multiple_of=8)  # None: the model's native size (512 for SD v1)
    lora_rank: int = Field(4, ge=1)  # LoRA rank r (diffusers' train_text_to_image_lora.py default)
    lora_alpha: int | None = Field(None, ge=1)  # LoRA scale numerator; None = lora_rank (scale 1)
    lora_target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections
    gradient_checkpointing: bool = False  # trade compute for GPU memory
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate autocast; fp16 needs CUDA
    ema: bool = False  # keep an exponential moving average of the trained weights and save that
    ema_decay: float = Field(0.9999, gt=0, lt=1)  # diffusers EMAModel default
    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping
    checkpoint_every: int = Field(500, ge=1)  # steps between resumable checkpoints (diffusers default 500)
    checkpoint: str | None = None  # sample from this fine-tuned model folder (an earlier workdir/model)

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.mode == "lora" else 1e-5


class MVCConfig(GeneratorConfig):
    """Defaults: the study's method (fine-tuned, captions with its prefix); sampling knobs are diffusers'
    InstructPix2Pix defaults, training knobs those of the ``train_instruct_pix2pix.py`` docs example.
    P and Q are not given in the text we could consult; their defaults are ours (see the comments)."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"coarse_steps", "fine_steps", "guidance_scale", "image_guidance_scale", "num_inference_steps",
                                "scheduler", "dtype"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"local_files_only", "enable_compile", "channels_last", "checkpoint_every",
                                   "gradient_checkpointing"})

    mode: Literal["pretrained", "finetuned"] = "finetuned"  # the study compares both
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # base SD pipeline folder or hub id
    local_files_only: bool = False  # never contact the hub, even for hub ids (as HF_HUB_OFFLINE=1)
    checkpoint: str | None = None  # finetuned: a trained mvc pipeline folder to sample from (no training)
    # --- captions
    # Where the captions' diversity comes from. Algorithm 1 splices the caption embeddings of one class, so it
    # makes new ones only when they differ. "labels": prefix (+ caption_template) from the label alone, so all
    # captions of a class are identical and the splicing copies identical values, i.e. does NOTHING (warned at run
    # time); "data": the real images' own captions (a caption column of the data manifest); "blip2": a BLIP-2
    # caption of each image (needs captioner; the study's); "auto": blip2 when captioner is set, else data
    # when the data has captions, else labels. (Attribute names are no source: mvc pools images by their
    # whole label vector, so the images of a pool share every attribute name.)
    caption_source: Literal["auto", "labels", "data", "blip2"] = "auto"
    captioner: str | None = None  # BLIP-2 folder or hub id (the study: BLIP-2), for caption_source blip2
    caption_prefix: str = "This is an image of {attributes}"  # the study's prefix ({attributes} = class name)
    caption_template: str | None = None  # caption_source labels: appended after the prefix; None: prefix alone
    caption_max_new_tokens: int = Field(30, ge=1)  # BLIP-2 caption length limit
    # --- Algorithm 1
    coarse_steps: int = Field(1, ge=0)  # P: blocks of whole rows copied (ours: 1 ≈ a third of the tokens)
    fine_steps: int = Field(5, ge=0)  # Q: pieces of single rows copied (ours: 5)
    # --- sampling
    guidance_scale: float = Field(7.5, ge=0)  # text classifier-free guidance (diffusers' default)
    image_guidance_scale: float = Field(1.5, ge=0)  # image guidance of image-conditioned models (1.5)
    num_inference_steps: int = Field(50, ge=1)
    scheduler: SchedulerName = "default"  # "default" keeps the checkpoint's sampler
    resolution: int | None = Field(None, ge=8, multiple_of=8)  # train/sample size; None: the model's own
    # sampling weights: "auto" = fp16 on CUDA, fp32 on CPU (inference only, so no loss scaling is involved)
    dtype: Precision | Literal["auto"] = "auto"
    enable_compile: bool = False  # torch.compile the UNet for sampling (GPU; first batch slow)
    channels_last: bool = False  # channels-last memory format for UNet and VAE (GPU speed-up)
    # --- fine-tuning (finetuned mode; the example: 256 px, 15000 steps of 4 x 4 accumulated images)
    train_steps: int = Field(2000, ge=0)  # optimisation steps (ours: our datasets are far smaller)
    batch_size: int = Field(4, ge=1)  # the example's 4 per batch (all processes together under accelerate launch)
    learning_rate: float = Field(5e-5, gt=0)  # the example's 5e-5, constant after warm-up
    lr_warmup_steps: int = Field(0, ge=0)
    conditioning_dropout: float = Field(0.05, ge=0, le=1 / 3)  # P(drop text) = P(drop image) = P(both)
    max_grad_norm: float = Field(1.0, gt=0)
    # autocast while training (fp32 master weights); auto = bf16 where the hardware runs it natively, else
    # fp32; fp16 (CUDA) trains with a loss scaler
    train_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False  # trade compute for memory (large models)
    checkpoint_every: int = Field(500, ge=1)  # steps between resumable checkpoints


class UnCLIPAugCondConfig(GeneratorConfig):
    """Defaults are the study's (Chen et al., 2025): SD 2.1 unCLIP, PNDM, 30 steps, guidance 2.0, p = 0.4."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"method", "prompt_template", "guidance_scale", "num_inference_steps", "scheduler", "noise_level",
                                "mix_alpha", "dropout_p", "dropout_rescale", "height", "width", "dtype"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"local_files_only", "enable_compile", "channels_last"})

    model: str = "stabilityai/stable-diffusion-2-1-unclip"  # StableUnCLIPImg2ImgPipeline folder or hub id
    local_files_only: bool = False  # never contact the hub, even for hub ids (as HF_HUB_OFFLINE=1)
    method: Method = "random-image"  # the conditioning; "random-image" is the study's baseline (see METHODS)
    prompt_template: str = "{attributes}"  # the study prompts with the class name ({attributes} = class name)
    guidance_scale: float = Field(2.0, ge=0)  # study: 2.0 large-scale training from scratch, 10.0 few-shot
    num_inference_steps: int = Field(30, ge=1)  # study: 30 PNDM steps
    scheduler: SchedulerName = "pndm"  # study: PNDM
    noise_level: int = Field(0, ge=0)  # unCLIP noise augmentation of the image embedding (pipeline default 0)
    mix_alpha: float = Field(1.0, gt=0)  # blends: Mixup/CutMix λ ~ Beta(α, α); 1 = λ uniform, as Yun et al. 2019
    dropout_p: float = Field(0.4, ge=0, lt=1)  # study: p = 0.4 on the image embedding
    dropout_rescale: bool = True  # scale kept entries by 1/(1-p) like F.dropout, keeping E[embedding]
    height: int | None = Field(None, ge=8, multiple_of=8)  # None: the model's native size (768 for SD 2.1)
    width: int | None = Field(None, ge=8, multiple_of=8)
    dtype: Precision | Literal["auto"] = "auto"  # "auto": fp16 on CUDA, fp32 on CPU; bf16 works on both
    enable_compile: bool = False  # torch.compile the UNet (GPU; first batch slow while it compiles)
    channels_last: bool = False  # channels-last memory format for UNet and VAE (GPU speed-up)


class PseudoLabelConfig(GeneratorConfig):
    classifier: str  # folder of a classifier saved by `synthaug train` (model.safetensors + classifier.json)
    base: str = "ddpm"  # the generator that draws unconditional samples
    base_params: dict[str, Any] = Field(default_factory=dict)
    base_workdir: str | None = None  # where the base generator keeps its trained model (default: workdir/base)


class NoiseConfig(GeneratorConfig):
    """Uniform noise from each item's seed (for benchmarks and tests of the store and the data path)."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"image_size", "channels"})

    image_size: int = Field(32, ge=1)  # square images of this side
    channels: Literal[1, 3] = 3  # 1: greyscale (L), 3: RGB


class ClassMapConfig(GeneratorConfig):
    """A pretrained class-conditional model whose classes are not the data's, reached through ``class_map``:
    study 003 (§3.3.1, Table 3) drew CIFAR-10's truck and ship from fine ImageNet classes (fire engine,
    garbage truck, ...; container ship, pirate ship). Defaults: DiT-XL/2 256 px on ImageNet and DiTPipeline's
    own sampling settings (50 steps, guidance 4.0)."""
    sampling_fields: ClassVar[frozenset[str]] = frozenset({"class_map", "sampling_steps", "guidance_scale",
                                                            "scheduler", "dtype", "image_size", "image_mode"})
    performance_fields: ClassVar[frozenset[str]] = frozenset({"local_files_only"})

    # a class-conditional pipeline folder saved with save_pretrained, or a hub id: a DiTPipeline (transformer,
    # vae, scheduler; class names from its model_index.json id2label) or a UNet2DModel with num_class_embeds
    # and a scheduler
    model: str = "facebook/DiT-XL-2-256"
    local_files_only: bool = False  # never contact the hub, even for hub ids (as HF_HUB_OFFLINE=1)
    # data class -> the model classes it is drawn from (ids, or names of the model's id2label); each item
    # draws one of its class's entries from its own seed, e.g. {truck: [555, "garbage truck"], ship: [510]}
    class_map: dict[str, list[int | str]] = Field(default_factory=dict)
    sampling_steps: int = Field(50, ge=1)  # denoising steps (DiTPipeline's default 50)
    # classifier-free guidance against the null class; None: 4.0 for DiT (DiTPipeline's default), 1.0
    # (plain conditional) for a UNet2DModel, which has no null class
    guidance_scale: float | None = Field(None, ge=0)
    scheduler: SchedulerName = "default"  # "default": the checkpoint's sampler (DDIM for DiT-XL-2-256)
    dtype: Precision | Literal["auto"] = "auto"  # "auto": fp16 on CUDA, fp32 on CPU; bf16 works on both
    # output side (or [height, width]); None: the real training images' size, else the model's own
    image_size: int | tuple[int, int] | None = None
    image_mode: Literal["auto", "L", "RGB"] = "auto"  # "auto": the real images' mode, else the model's


CONFIGS: dict[str, type[GeneratorConfig]] = {
    "ddpm": DDPMConfig, "sd-text2img": SDText2ImgConfig, "sd-finetune": SDFinetuneConfig, "mvc": MVCConfig,
    "unclip-augcond": UnCLIPAugCondConfig, "pseudo-label": PseudoLabelConfig, "noise": NoiseConfig,
    "class-map": ClassMapConfig,
}


def config_class(name: str) -> type[GeneratorConfig]:
    """The config class of generator ``name``; a generator registered from outside this package brings its
    own (its ``config_class``), which imports it."""
    GENERATORS.check(name)
    return CONFIGS.get(name) or GENERATORS.get(name).config_class


def generator_config(name: str, params: dict[str, Any] | None) -> GeneratorConfig:
    """Validates ``params`` against the config class of generator ``name``.

    Raises:
        ValueError: naming each bad field (``generator.params.<field>``) and its value.
    """
    cls = config_class(name)
    try:
        return cls(**(params or {}))
    except ValidationError as e:
        problems = "; ".join(
            f"generator.params.{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
            + (f", {hint}" if err["type"] == "extra_forbidden" and (hint := unknown_key_hint(cls, err["loc"])) else "")
            for err in e.errors()
        )
        raise SettingError(f"Invalid config for generator {name!r}: {problems}") from None
