"""Image feature extractors for fidelity metrics and the memorisation check, by name:

- ``classifier``: the penultimate layer (the backbone's pooled output) of a classifier trained on the long-tailed
  *training* split, e.g. the real-only cross-entropy arm's ``train/real-ce/seed<k>/model``; always available
  offline, so it is the default;
- ``inception``: torchmetrics' FID Inception-v3 (pool3, 2048-d) from a local weights file;
- ``clip``: image embeddings of a CLIP model given by local path or hub id (as in CMMD, Jayasumana et al. 2024);
- ``dinov2``: the CLS token of a DINOv2 model given by local path or hub id (FD-DINOv2, Stein et al. 2023).

Every extractor has a ``label`` ("classifier:runs/demo/train/real-ce/seed0/model") that goes beside every
number it makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from synthaug.data.schema import LabeledImages
from synthaug.errors import MissingFileError, SettingError
from synthaug.registry import Registry

FEATURES: Registry[Callable[..., "FeatureExtractor"]] = Registry("feature extractor")


@dataclass
class FeatureExtractor:
    """A module mapping a prepared batch to (N, d) features, and the preparation of images for it.

    Attributes:
        name: the registry name.
        source: what the features come from (a model folder, a weights file, a hub id).
        module: the network (eval mode).
        prepare: ``LabeledImages -> Dataset`` of (tensor, ...) items ready for ``module``.
    """

    name: str
    source: str
    module: nn.Module
    prepare: Callable[[LabeledImages], torch.utils.data.Dataset]
    device: torch.device

    @property
    def label(self) -> str:
        return f"{self.name}:{self.source}"

    @torch.no_grad()
    def __call__(self, images: LabeledImages, batch_size: int = 256) -> torch.Tensor:
        """(N, d) float32 features of ``images`` (on the CPU)."""
        if not len(images):
            raise SettingError("No images to extract features from.")
        loader = DataLoader(self.prepare(images), batch_size=batch_size, shuffle=False)
        out = [self.module(batch[0].to(self.device)).float().flatten(1).cpu() for batch in loader]
        return torch.cat(out)


class _Tensors(torch.utils.data.Dataset):
    """Images as single-item tuples of tensors made by ``convert``."""

    def __init__(self, images: LabeledImages, convert: Callable):
        self.images, self.convert = images, convert

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return (self.convert(self.images.image(i)),)


@FEATURES.register("classifier")
def classifier_features(source: str | Path, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The backbone of a classifier saved by :func:`synthaug.train.save_classifier` (its penultimate features),
    fed with the classifier's own test-time transform."""
    from synthaug.train import load_classifier
    from synthaug.train.augment import eval_transform
    from synthaug.train.data import ImageSet

    model, meta = load_classifier(source, device)
    size = meta["image_size"]
    transform = eval_transform(meta["in_chans"], size, meta.get("normalization"))
    return FeatureExtractor("classifier", str(source), model.backbone.eval(),
                            lambda images: ImageSet(images, None, transform, size), torch.device(device))


@FEATURES.register("inception")
def inception_features(source: str | Path | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """torchmetrics' FID Inception-v3 (2048-d pool features) with weights from a local file
    (``pt_inception-2015-12-05-6726825d.pth``, the weights pytorch-fid and torch-fidelity use)."""
    if source is None or not Path(source).is_file():
        raise MissingFileError(
            f"Inception weights file {source!r} not found (evaluation.extractor_source). Download "
            "pt_inception-2015-12-05-6726825d.pth once (github.com/mseitzer/pytorch-fid releases) and give its "
            "path, or use evaluation.extractor: classifier (needs no download).")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        module = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(source))
    except ModuleNotFoundError as e:
        raise MissingFileError(f"The inception extractor needs torch-fidelity ({e}); `pip install torch-fidelity`, "
                               "or use evaluation.extractor: classifier.") from None
    from torchvision.transforms import v2

    # uint8 RGB at any size: the module resizes to 299 itself
    to_uint8 = v2.Compose([v2.Lambda(lambda im: im.convert("RGB")), v2.PILToTensor()])
    return FeatureExtractor("inception", str(source), module.to(device), lambda images: _Tensors(images, to_uint8),
                            torch.device(device))


class _ModelOutput(nn.Module):
    """A transformers vision model called on ``pixel_values``, returning one field of its output."""

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model, self.field = model, field

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.field)


def _transformers_extractor(name: str, source: str | None, model_class, processor_class, field: str, *, what: str,
                            example: str, device: torch.device | str) -> FeatureExtractor:
    """A transformers vision model and its image processor from ``source`` (a local folder or a hub id), the
    images prepared as the processor says; the error names the setting and the fix when either is missing."""
    if not source:
        raise SettingError(f"evaluation.fidelity.extractor: {name} needs evaluation.fidelity.extractor_source: a "
                           f"{what} model folder or hub id (e.g. {example}).")
    try:
        processor = processor_class.from_pretrained(source)
        model, info = model_class.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise MissingFileError(
            f"Could not load a {what} model from {source!r} (evaluation.fidelity.extractor_source): "
            f"{type(e).__name__}: {str(e)[:300]} Give a local folder holding a {what} checkpoint (config.json, "
            f"weights, preprocessor_config.json), or a hub id such as {example} cached once with network access "
            f"(`huggingface-cli download {example}`).") from None
    if info["missing_keys"]:  # another architecture's checkpoint loads with random weights in their place
        missing = sorted(info["missing_keys"])
        raise MissingFileError(
            f"{source!r} (evaluation.fidelity.extractor_source) is not a {what} checkpoint: its weights lack "
            f"{len(missing)} of the model's ({', '.join(missing[:3])}, ...; config model_type "
            f"{model.config.model_type!r}). Give a {what} model folder or hub id such as {example}.")

    def convert(image):
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    return FeatureExtractor(name, str(source), _ModelOutput(model, field).to(device).eval(),
                            lambda images: _Tensors(images, convert), torch.device(device))


@FEATURES.register("clip")
def clip_features(source: str | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Projected image embeddings of a CLIP model (local folder or hub id; offline unless it is cached)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    return _transformers_extractor("clip", source, CLIPVisionModelWithProjection, CLIPImageProcessor, "image_embeds",
                                   what="CLIP", example="openai/clip-vit-large-patch14-336", device=device)


@FEATURES.register("dinov2")
def dinov2_features(source: str | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The CLS token (after the final layer norm: ``Dinov2Model``'s pooled output) of a DINOv2 model, the
    representation Stein et al. (NeurIPS 2023) recommend for FD, KID and precision/recall; local folder or hub id
    (they use ViT-L/14, ``facebook/dinov2-large``), offline unless it is cached."""
    from transformers import AutoImageProcessor, Dinov2Model

    # the processor the checkpoint names (BitImageProcessor for Meta's: resize 256, centre crop 224, ImageNet norm)
    return _transformers_extractor("dinov2", source, Dinov2Model, AutoImageProcessor, "pooler_output",
                                   what="DINOv2", example="facebook/dinov2-large", device=device)


def create_extractor(name: str, source: str | Path | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The extractor registered as ``name``, built from ``source`` (model folder, weights file or hub id).

    Raises:
        UnknownNameError: an unknown name (the message lists the valid ones).
        MissingFileError: the model or weights are not where ``source`` says.
    """
    return FEATURES.get(name)(source, device=device)
