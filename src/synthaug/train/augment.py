"""Augmentation presets (torchvision transforms v2), registered by name, applied to real and synthetic
images alike. Each preset maps (channels, image size) to a transform from a uint8 image tensor to a
normalised float tensor."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from synthaug.registry import Registry

AUGMENTS: Registry = Registry("augmentation preset")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalize(channels: int) -> v2.Transform:
    """ImageNet statistics for RGB, (0.5, 0.5) for grayscale."""
    if channels == 3:
        return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return v2.Normalize([0.5] * channels, [0.5] * channels)


def _finish(channels: int, *ops: v2.Transform) -> v2.Compose:
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), normalize(channels)])


def eval_transform(channels: int, image_size: int) -> v2.Compose:
    """The test-time transform: resize to the training size, then normalise."""
    return _finish(channels, v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size))


@AUGMENTS.register("none")
def preset_none(channels: int, image_size: int) -> v2.Compose:
    """No augmentation: resize and normalise only."""
    return eval_transform(channels, image_size)


@AUGMENTS.register("digits")
def preset_digits(channels: int, image_size: int) -> v2.Compose:
    """Small shifts, rotations and scalings that keep a digit's identity (no flips)."""
    return _finish(channels, v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                   v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))


@AUGMENTS.register("basic")
def preset_basic(channels: int, image_size: int) -> v2.Compose:
    """Horizontal flip + normalisation."""
    return _finish(channels, v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                   v2.RandomHorizontalFlip())


def create_transform(name: str, channels: int, image_size: int) -> v2.Compose:
    """The training transform of the preset registered as ``name``."""
    return AUGMENTS.get(name)(channels, image_size)
