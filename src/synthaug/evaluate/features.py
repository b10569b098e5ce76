"""Image feature extractors for fidelity metrics and the memorisation check, by name:

- ``classifier``: the penultimate layer (the backbone's pooled output) of a classifier trained on the long-tailed
  *training* split, e.g. the real-only cross-entropy arm's ``train/real-ce/seed<k>/model``; always available
  offline, so it is the default;
- ``inception``: torchmetrics' FID Inception-v3 (pool3, 2048-d) from a local weights file;
- ``clip``: image embeddings of a CLIP model given by local path or hub id (as in CMMD, Jayasumana et al. 2024).

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


class _ClipImage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


@FEATURES.register("clip")
def clip_features(source: str | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Projected image embeddings of a CLIP model (local folder or hub id; offline unless it is cached)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    if not source:
        raise SettingError("evaluation.extractor: clip needs evaluation.extractor_source: a CLIP model folder or "
                           "hub id (e.g. openai/clip-vit-base-patch32).")
    try:
        processor = CLIPImageProcessor.from_pretrained(source)
        model = CLIPVisionModelWithProjection.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise MissingFileError(
            f"Could not load a CLIP model from {source!r} (evaluation.extractor_source): {type(e).__name__}: "
            f"{str(e)[:300]} Give a local folder holding a CLIP checkpoint (config.json, weights, "
            "preprocessor_config.json) or a hub id cached with network access once.") from None

    def convert(image):
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    return FeatureExtractor("clip", str(source), _ClipImage(model).to(device).eval(),
                            lambda images: _Tensors(images, convert), torch.device(device))


def create_extractor(name: str, source: str | Path | None, *, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The extractor registered as ``name``, built from ``source`` (model folder, weights file or hub id).

    Raises:
        UnknownNameError: an unknown name (the message lists the valid ones).
        MissingFileError: the model or weights are not where ``source`` says.
    """
    return FEATURES.get(name)(source, device=device)
