"""Classifier-training configs as plain data (pydantic only: no torch, timm or torchvision).

The registries of losses, batch composition strategies (``mixing``), augmentation presets and MixUp / CutMix
variants (``batch_mix``) are declared here by name
and import path, so a config validates without importing their implementations; each implementation module
registers itself into the same registry.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from synthaug.registry import Registry, registered
from synthaug.errors import SettingError

LOSSES: Registry = Registry("loss", {
    "ce": "synthaug.train.losses:CrossEntropy",
    "weighted-ce": "synthaug.train.losses:WeightedCrossEntropy",
    "balanced-softmax": "synthaug.train.losses:BalancedSoftmax",
})
BATCH_COMPOSITION: Registry = Registry("mixing strategy", {
    "real-only": "synthaug.train.batch_composition:RealOnly",
    "combined": "synthaug.train.batch_composition:Combined",
    "oversample": "synthaug.train.batch_composition:Oversample",
    "oversample-synthetic": "synthaug.train.batch_composition:OversampleSynthetic",
    "balanced-batch": "synthaug.train.batch_composition:BalancedBatch",
    "rsp": "synthaug.train.batch_composition:RandomSelection",
    "two-phase": "synthaug.train.batch_composition:TwoPhase",
})
AUGMENTS: Registry = Registry("augmentation preset", {
    name: f"synthaug.train.augment:preset_{name}"
    for name in ("none", "digits", "basic", "soft", "hard", "synthetic", "autoaugment", "randaugment",
                 "trivialaugment")
})
MIXUP_CUTMIX: Registry = Registry("batch mix", {
    "none": "synthaug.train.mixup:NoMixupCutmix",
    "cutmix": "synthaug.train.mixup:CutMix",
    "mixup": "synthaug.train.mixup:MixUp",
    "cutmix-or-mixup": "synthaug.train.mixup:CutMixOrMixUp",
})

REAL_ONLY = {"real-only", "oversample"}  # batch compositions (train.mixing) that never use the synthetic set
SHARE_COMPOSITIONS = {"balanced-batch", "rsp", "oversample-synthetic"}  # batch compositions that take synthetic_share
PRIOR_LOSSES = {"weighted-ce", "balanced-softmax"}  # losses built from the class distribution (the prior)
PERFORMANCE = {"num_workers", "image_cache_mb"}  # fields that change neither weights nor metrics: in no fingerprint
SYNTHETIC_PRESETS = {"synthetic"}  # augmentation presets that imply the arm uses the synthetic set
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 where the hardware runs it natively, else fp32


class _WithAddedFields(BaseModel):
    """A config whose :attr:`added_fields` (fields added after run folders were recorded, with the value that
    behaves as before they existed) are left out of every dump at that value, so the arm fingerprints, which hash
    ``model_dump``, of earlier run folders still match; rebuilding a config from such a dump gives the same config."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    added_fields: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _leave_out_added(self, handler) -> dict[str, Any]:
        dump = handler(self)
        return {k: v for k, v in dump.items() if not (k in self.added_fields and v == self.added_fields[k])}


class ModelConfig(_WithAddedFields):
    name: str = "small-cnn"  # "small-cnn" or any timm model name (see timm.list_models())
    pretrained: bool = False  # load ImageNet weights through timm (needs them cached or reachable)
    head_hidden: list[int] = Field(default_factory=list)  # hidden sizes of the MLP head, e.g. [512, 128]
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout before each head layer
    # "all-but-last": only the last `trainable_stages` backbone stages (timm feature_info, e.g. layer4) and the
    # head train; "all-but-head": only the head. Frozen BatchNorm layers stay in eval mode (running stats kept).
    freeze: Literal["none", "all-but-head", "all-but-last"] = "none"
    trainable_stages: int = Field(1, ge=0)  # with freeze="all-but-last": the last N backbone stages train
    drop_rate: float = Field(0.0, ge=0, lt=1)  # backbone dropout before its pooled features (timm: drop_rate=)
    # a timm backbone's weights from a local file, instead of `pretrained` (which reads timm's HF cache): a
    # .safetensors file, a torch checkpoint (read with weights_only=True; a "state_dict" / "model" entry is
    # taken), or a folder holding timm's model.safetensors or pytorch_model.bin (as the hub repo ships it)
    weights: str | None = None

    # fields added after run folders were recorded, with the value that behaves as before they existed: at that
    # value a field is left out of every dump (so of the arm fingerprints), and earlier train stages still match
    added_fields: ClassVar[dict[str, Any]] = {"weights": None}

    @model_validator(mode="after")
    def _one_weights_source(self):
        if self.weights is not None and self.name == "small-cnn":
            raise SettingError(f"train.model.weights ({self.weights}) loads a timm backbone's weights, but "
                               "train.model.name is 'small-cnn'; name the timm model the weights are for.")
        if self.weights is not None and self.pretrained:
            raise SettingError(f"train.model.weights ({self.weights}) and train.model.pretrained: true both name "
                               "the backbone's weights; keep weights (a local file) and set pretrained: false.")
        return self


class TranslationLabels(BaseModel):
    """The training target of a synthetic image translated from a real image of class a into class b (ddpm's
    ``translate_from``) at strength s. "hard": b; "soft": Diff-Mix's mixture (Wang et al., CVPR 2024, §3.3)
    (1 − s^γ) · onehot(a) + s^γ · onehot(b), per label group."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["hard", "soft"] = "hard"
    gamma: float = Field(0.5, gt=0)  # γ of λ(s) = s^γ: below 1 gives the target class b more than s


class Relabel(BaseModel):
    """Real training images of other classes as extra, soft-labelled samples of the rarer classes: for each class
    c, (target − n_c) images drawn from the training images of the other classes, each labelled
    ``weight · onehot(c) + (1 − weight) · onehot(its own class)``. M2m's major-to-minor idea (Kim et al., CVPR
    2020) without its translation, with a mixture label as Diff-Mix's; it needs no generator, only the training
    split. The stand-ins join the arm's synthetic part: its mixing and ω apply to them, ``synthetic_ratio`` does
    not."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.0, ge=0, lt=1)  # class c's share of a stand-in's label; 0: off (1: a wrong label)
    target: int | None = Field(None, ge=1)  # fill each class up to this many images; None: the largest class's count


class TrainConfig(_WithAddedFields):
    # fields added after run folders were recorded, with the value that behaves as before they existed: at that
    # value a field is left out of every dump (so of the arm fingerprints, which hash model_dump), and earlier
    # train stages still match
    added_fields: ClassVar[dict[str, Any]] = {"synthetic_weight": 1.0,
                                              "translation_labels": {"mode": "hard", "gamma": 0.5},
                                              "synthetic_ratio": None, "relabel": {"weight": 0.0, "target": None}}

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: registered(LOSSES) = "ce"  # "ce", "weighted-ce" or "balanced-softmax"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # weighted-ce: w_i = k / N_i, loss = Σ_batch w_{y} · CE / batch size, an unnormalised weighted sum (the
    # DeepFashion study's reading), so k scales the loss (and with SGD, or Adam's coupled weight decay, the
    # effective step); N_i are the expected images of class i in one epoch of the arm's batches (see `prior`).
    weight_k: float = Field(1.0, gt=0)
    # weighted-ce / balanced-softmax: the class distribution the loss corrects for. "auto": the one the arm's
    # batches follow (real + synthetic counts for combined and two-phase phase 1, the expected batch composition
    # for balanced-batch / rsp, uniform for oversample and oversample-synthetic); "real": the real images' counts.
    # Written to prior.json.
    prior: Literal["auto", "real"] = "auto"
    # batch composition, how batches draw on the real and synthetic sets (synthaug.train.batch_composition):
    # real-only, combined, balanced-batch, oversample, oversample-synthetic, rsp, two-phase
    mixing: registered(BATCH_COMPOSITION) = "real-only"
    # balanced-batch: the synthetic part of every batch (round(batch_size × share) images, at least one real and
    # one synthetic); rsp: the probability p that a batch slot is synthetic; oversample-synthetic: the most of a
    # class's draws that are synthetic (the rest are its real images, oversampled)
    synthetic_share: float = Field(0.5, ge=0, lt=1)
    augment: registered(AUGMENTS) = "none"  # preset: none, basic, soft, hard, synthetic, autoaugment, ...
    # MixUp / CutMix of the batch (synthaug.train.mixup): cutmix, mixup, cutmix-or-mixup (soft targets per group)
    batch_mix: registered(MIXUP_CUTMIX) = "none"
    batch_mix_alpha: float = Field(1.0, gt=0)  # CutMix/MixUp: λ ~ Beta(α, α)
    epochs: int = Field(15, ge=1)  # epochs (two-phase: of phase 1, on real + synthetic images)
    phase2_epochs: int = Field(0, ge=0)  # two-phase: epochs of real-only fine-tuning after phase 1
    phase2_lr_scale: float = Field(0.1, gt=0, le=1)  # two-phase: phase-2 learning rate = lr × this, cosine to 0
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw
    momentum: float = 0.9  # sgd
    warmup_epochs: float = Field(1.0, ge=0)  # linear warm-up from 0, then cosine decay to 0 (over `epochs`)
    image_size: int | None = None  # None: a pretrained timm model's input size, else the real images' size
    precision: Precision = "auto"  # autocast; auto = bf16 where native (CUDA bf16, AVX512-BF16/AMX), else fp32
    num_workers: int = Field(0, ge=0)  # loader processes; performance only (results do not depend on it)
    # ω: the loss of every synthetic image is multiplied by this (DiffuLT's ω, Shao et al. 2024; DataDream's λ):
    # loss = (Σ_real ℓ + ω Σ_synthetic ℓ) / batch size. The class prior (`prior`) is the batches' label
    # distribution whatever ω. With CutMix/MixUp each label share's loss is weighted by the ω of the image it
    # comes from (see synthaug.train.mixup)
    synthetic_weight: float = Field(1.0, ge=0)
    # targets of ddpm translations (translate_from): hard (the class made) or soft (Diff-Mix's mixture label);
    # soft needs the synthetic set's soft targets (synthaug.train.data.attach_translation_targets)
    translation_labels: TranslationLabels = Field(default_factory=TranslationLabels)
    # the share of each class's synthetic images the arm uses, by class name (first label group) or shot group
    # ("many", "medium", "few": by the class's real training count and data.shots), e.g. {few: 1, medium: 0.5,
    # many: 0}: of class c's n_c synthetic images (plan order, after filters) the first round(r × n_c); a class's
    # own entry wins over its group's, a class named by neither keeps all. The arm's mixing then mixes that
    # subset (combined: fewer images in the pool; oversample-synthetic: real draws fill a class's missing synthetic
    # ones). None: every image. Tuned by tune.synthetic_ratio (synthaug.tuning.config)
    synthetic_ratio: dict[str, float] | None = None
    # stand-ins for the rarer classes made from real images of the others, with soft labels (see Relabel); they
    # join the synthetic part, so they need a mixing that trains on synthetic images (e.g. oversample-synthetic),
    # and an arm with synthetic: none may then use one
    relabel: Relabel = Field(default_factory=Relabel)
    # decoded, resized training images kept in memory per loading process, up to this many MB (the rest are
    # decoded when needed); 0: decode every time. Performance only.
    image_cache_mb: float = Field(2048.0, ge=0)

    @field_validator("synthetic_ratio", mode="before")
    @classmethod
    def _no_booleans(cls, ratio: Any) -> Any:
        if isinstance(ratio, dict):
            for key, share in ratio.items():
                if isinstance(share, bool):
                    raise SettingError(f"train.synthetic_ratio.{key} is {share}; give a share in [0, 1] (0: none "
                                       "of the class's synthetic images, 1: all), not true/false.")
        return ratio

    @field_validator("synthetic_ratio")
    @classmethod
    def _shares(cls, ratio: dict[str, float] | None) -> dict[str, float] | None:
        if ratio is None:
            return None
        if not ratio:
            raise SettingError("train.synthetic_ratio is empty; give a share per class or shot group, e.g. {few: 1, "
                               "medium: 0.5, many: 0}, or leave it out to use every synthetic image.")
        for key, share in ratio.items():
            if not key.strip():
                raise SettingError(f"train.synthetic_ratio has an empty key {key!r}; keys are class names or the "
                                   "shot groups many, medium, few.")
            if not 0 <= share <= 1:
                raise SettingError(f"train.synthetic_ratio.{key} is {share}; a share of the class's synthetic images "
                                   "must lie in [0, 1] (0: none of them, 1: all).")
        return ratio

    @model_validator(mode="after")
    def _consistent(self):
        if self.augment in SYNTHETIC_PRESETS and self.mixing in REAL_ONLY:
            raise SettingError(f"augment {self.augment!r} trains on generated images too, but mixing "
                             f"{self.mixing!r} uses real images only; use mixing combined, balanced-batch, rsp or "
                             "two-phase (with the arm's synthetic: generated), or augment 'hard'.")
        if self.mixing == "two-phase" and self.phase2_epochs < 1:
            raise SettingError("mixing 'two-phase' needs phase2_epochs >= 1 (the real-only fine-tuning epochs).")
        if self.mixing != "two-phase" and self.phase2_epochs:
            raise SettingError(f"phase2_epochs={self.phase2_epochs} only applies to mixing 'two-phase', but mixing is "
                             f"{self.mixing!r}; set phase2_epochs: 0 or mixing: two-phase.")
        if self.mixing == "balanced-batch":
            balanced_batch_split(self.batch_size, self.synthetic_share)
        return self

    def inapplicable(self, fields: set[str]) -> dict[str, str]:
        """The ``fields`` that this config's loss, mixing, batch mix, optimizer or freeze mode ignores.

        Args:
            fields: field names, ``"model.<name>"`` for the model's (e.g. the ones a user set explicitly).

        Returns:
            ``{field: one-line reason naming the setting it would need}``; fields that apply are left out.

        Raises:
            KeyError: a name that is not a field of TrainConfig / ModelConfig.
        """
        reasons = {}
        for name in sorted(fields):
            level, field = (ModelConfig, name[6:]) if name.startswith("model.") else (TrainConfig, name)
            if field not in level.model_fields:
                raise KeyError(f"{name!r} is not a train config field.")
            needs = self._applies(name)
            if needs is not None:
                reasons[name] = f"train.{name} is ignored: it {needs}."
        return reasons

    def _applies(self, name: str) -> str | None:
        """None if field ``name`` takes effect under this config, else what it needs (for :meth:`inapplicable`)."""
        two_phase = f"applies to mixing two-phase, but mixing is {self.mixing!r}"
        synthetic = (self.mixing not in REAL_ONLY,
                     f"applies to mixings that train on synthetic images, but mixing {self.mixing!r} uses real "
                     "images only")
        rules = {
            "synthetic_share": (self.mixing in SHARE_COMPOSITIONS,
                                f"applies to mixing balanced-batch, rsp or oversample-synthetic, but mixing is "
                                f"{self.mixing!r}"),
            "weight_k": (self.loss == "weighted-ce", f"applies to loss weighted-ce, but loss is {self.loss!r}"),
            "prior": (self.loss in PRIOR_LOSSES,
                      f"applies to loss weighted-ce or balanced-softmax, but loss is {self.loss!r}"),
            "batch_mix_alpha": (self.batch_mix != "none",
                                "applies to batch_mix cutmix, mixup or cutmix-or-mixup, but batch_mix is 'none'"),
            "momentum": (self.optimizer == "sgd", f"applies to optimizer sgd, but optimizer is {self.optimizer!r}"),
            "betas": (self.optimizer in ("adam", "adamw"),
                      f"applies to optimizer adam or adamw, but optimizer is {self.optimizer!r}"),
            "phase2_epochs": (self.mixing == "two-phase", two_phase),
            "phase2_lr_scale": (self.mixing == "two-phase", two_phase),
            "synthetic_weight": synthetic,
            "translation_labels": synthetic,
            "synthetic_ratio": synthetic,
            "relabel": synthetic,
            "model.trainable_stages": (self.model.freeze == "all-but-last",
                                       f"applies to model.freeze all-but-last, but freeze is {self.model.freeze!r}"),
        }
        applies, needs = rules.get(name, (True, ""))
        return None if applies else needs

    @property
    def soft_targets(self) -> bool:
        """Whether the synthetic part trains on soft targets (soft translation labels, or relabelled stand-ins)."""
        return self.translation_labels.mode == "soft" or self.relabel.weight > 0

    @property
    def total_epochs(self) -> int:
        """Epochs of both phases (``epochs`` + ``phase2_epochs``)."""
        return self.epochs + self.phase2_epochs

    def phase(self, epoch: int) -> int:
        """1, or 2 for the real-only epochs of ``two-phase`` (``epoch`` counts from 0)."""
        return 2 if self.mixing == "two-phase" and epoch >= self.epochs else 1


def balanced_batch_split(batch_size: int, synthetic_share: float) -> tuple[int, int]:
    """(real, synthetic) images per batch of mixing ``balanced-batch``: synthetic = round(batch_size × share).

    Raises:
        SettingError: a batch with no real image, or none synthetic although ``synthetic_share > 0``; the
            message names the smallest batch_size that works at this share.
    """
    per_synth = round(batch_size * synthetic_share)
    if per_synth < batch_size and (per_synth > 0 or synthetic_share == 0):
        return batch_size - per_synth, per_synth
    smallest = next(b for b in range(batch_size + 1, 10**6) if 0 < round(b * synthetic_share) < b)
    shares = (f", or a synthetic_share strictly between {0.5 / batch_size:.3g} and {1 - 0.5 / batch_size:.3g}"
              if batch_size > 1 else "")
    raise SettingError(
        f"mixing 'balanced-batch' with batch_size={batch_size} and synthetic_share={synthetic_share} gives "
        f"{batch_size - per_synth} real and {per_synth} synthetic images per batch; every batch needs at least one "
        f"of each. Use batch_size >= {smallest}{shares}.")
