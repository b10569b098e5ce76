"""Augmentation presets (torchvision transforms v2), registered by name, applied to real and synthetic
images alike. Each preset maps (channels, image size) to a transform from a uint8 image tensor to a
normalised float tensor; every preset works on grayscale (1-channel) images too (colour jitter leaves
their saturation and hue alone).

The presets of the DeepFashion attribute study build on each other:

- ``basic``: horizontal flip + normalisation (ImageNet statistics for RGB);
- ``soft``: basic + zoom (a random centre crop resized back) + colour jitter + random affine;
- ``hard``: soft + sharpness + contrast;
- ``synthetic``: the ``hard`` transform; choosing it means the arm trains on generated images too, so the
  training config requires a batch composition (``train.mixing``) that uses them (see :data:`SYNTHETIC_PRESETS`).

``autoaugment``, ``randaugment`` and ``trivialaugment`` add torchvision's learned / random policies after a
horizontal flip. Batch-level CutMix / MixUp live in :mod:`synthaug.train.mixup`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from synthaug.train.config import AUGMENTS, SYNTHETIC_PRESETS  # noqa: F401  (re-exported)
from synthaug.errors import SettingError


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Normalization = dict[str, list[float]]  # {"mean": [...], "std": [...]}, one value per channel


def normalize(channels: int) -> v2.Transform:
    """ImageNet statistics for RGB, (0.5, 0.5) for grayscale."""
    if channels == 3:
        return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return v2.Normalize([0.5] * channels, [0.5] * channels)


def _normalized(transform: v2.Compose, normalization: Normalization | None) -> v2.Compose:
    """``transform`` with its final :func:`normalize` replaced by ``normalization`` (e.g. a pretrained timm
    model's mean and std); unchanged when None."""
    if normalization is None:
        return transform
    *ops, last = transform.transforms
    if not isinstance(last, v2.Normalize):
        raise TypeError(f"an augmentation preset must end with normalize(), but ends with {type(last).__name__}.")
    return v2.Compose([*ops, v2.Normalize(normalization["mean"], normalization["std"])])


def _finish(channels: int, *ops: v2.Transform) -> v2.Compose:
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), normalize(channels)])


def _sized(image_size: int) -> list[v2.Transform]:
    return [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]


class RandomCenterZoom(nn.Module):
    """Zooms in: crops the centre ``f`` of each side, f ~ U(min_fraction, 1), and resizes back.

    Args:
        min_fraction: the smallest kept side fraction (0.8 = up to 1.25× zoom).
        p: probability of zooming an image.
    """

    def __init__(self, min_fraction: float = 0.8, p: float = 0.5):
        super().__init__()
        if not 0 < min_fraction <= 1:
            raise SettingError(f"min_fraction must be in (0, 1], but got {min_fraction=}.")
        self.min_fraction, self.p = min_fraction, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        h, w = image.shape[-2:]
        f = self.min_fraction + (1 - self.min_fraction) * float(torch.rand(()))
        crop = TF.center_crop(image, [max(1, round(h * f)), max(1, round(w * f))])
        return TF.resize(crop, [h, w], antialias=True)


def _soft_ops() -> list[nn.Module]:
    return [v2.RandomHorizontalFlip(), RandomCenterZoom(0.8, p=0.5),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05))]


def _hard_ops() -> list[nn.Module]:
    return _soft_ops() + [v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.5), v2.RandomAutocontrast(p=0.3)]


def eval_transform(channels: int, image_size: int, normalization: Normalization | None = None) -> v2.Compose:
    """The test-time transform: resize to the training size, then normalise (with ``normalization`` if given,
    the one the classifier trained with: ``classifier.json``'s ``normalization``)."""
    return _normalized(_finish(channels, *_sized(image_size)), normalization)


@AUGMENTS.register("none")
def preset_none(channels: int, image_size: int) -> v2.Compose:
    """No augmentation: resize and normalise only."""
    return eval_transform(channels, image_size)


@AUGMENTS.register("digits")
def preset_digits(channels: int, image_size: int) -> v2.Compose:
    """Small shifts, rotations and scalings that keep a digit's identity (no flips)."""
    return _finish(channels, *_sized(image_size),
                   v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))


@AUGMENTS.register("basic")
def preset_basic(channels: int, image_size: int) -> v2.Compose:
    """Horizontal flip + normalisation."""
    return _finish(channels, *_sized(image_size), v2.RandomHorizontalFlip())


@AUGMENTS.register("soft")
def preset_soft(channels: int, image_size: int) -> v2.Compose:
    """basic + zoom (random centre crop, resized back) + colour jitter + random affine."""
    return _finish(channels, *_sized(image_size), *_soft_ops())


@AUGMENTS.register("hard")
def preset_hard(channels: int, image_size: int) -> v2.Compose:
    """soft + sharpness + contrast."""
    return _finish(channels, *_sized(image_size), *_hard_ops())


@AUGMENTS.register("synthetic")
def preset_synthetic(channels: int, image_size: int) -> v2.Compose:
    """hard, for an arm that adds generated images (the training config enforces a synthetic mixing)."""
    return preset_hard(channels, image_size)


@AUGMENTS.register("autoaugment")
def preset_autoaugment(channels: int, image_size: int) -> v2.Compose:
    """Flip + AutoAugment with the ImageNet policy (Cubuk et al., 2019)."""
    return _finish(channels, *_sized(image_size), v2.RandomHorizontalFlip(),
                   v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))


@AUGMENTS.register("randaugment")
def preset_randaugment(channels: int, image_size: int) -> v2.Compose:
    """Flip + RandAugment, 2 ops at magnitude 9 (Cubuk et al., 2020)."""
    return _finish(channels, *_sized(image_size), v2.RandomHorizontalFlip(),
                   v2.RandAugment(num_ops=2, magnitude=9))


@AUGMENTS.register("trivialaugment")
def preset_trivialaugment(channels: int, image_size: int) -> v2.Compose:
    """Flip + TrivialAugment Wide (Müller & Hutter, 2021)."""
    return _finish(channels, *_sized(image_size), v2.RandomHorizontalFlip(), v2.TrivialAugmentWide())


def create_transform(name: str, channels: int, image_size: int,
                     normalization: Normalization | None = None) -> v2.Compose:
    """The training transform of the preset registered as ``name``, normalising with ``normalization`` when
    given (else :func:`normalize`).

    Raises:
        KeyError: an unknown preset; the message lists the valid names.
    """
    return _normalized(AUGMENTS.get(name)(channels, image_size), normalization)
