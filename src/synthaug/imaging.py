"""Image <-> tensor conversions shared by generators, training and evaluation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError


def load_tensor(
    images: LabeledImages, *, size: int | None = None, progress: bool = False, desc: str = "load images"
) -> torch.Tensor:
    """All images as one float tensor (N, C, H, W) in [0, 1], resized/cropped to ``size`` if given."""
    resize = None if size is None else v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    out = []
    for i in tqdm(range(len(images)), desc=desc, disable=not progress, unit="img"):
        t = to_tensor(images.image(i))
        out.append(resize(t) if resize is not None else t)
    if not out:
        raise SettingError("No images to load.")
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise SettingError(f"Images have different sizes {sorted(shapes)[:4]}; set an image_size to resize them.")
    return torch.stack(out)


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """(N, C, H, W) floats in [0, 1] -> PIL images ("L" for one channel, "RGB" for three)."""
    arr = (batch.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    arr = np.transpose(arr, (0, 2, 3, 1))
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def image_grid(images: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """Pastes images (all the size of the first) into a rows × cols grid."""
    w, h = images[0].size
    grid = Image.new(images[0].mode, (cols * w, rows * h))
    for k, im in enumerate(images[: rows * cols]):
        grid.paste(im, ((k % cols) * w, (k // cols) * h))
    return grid
