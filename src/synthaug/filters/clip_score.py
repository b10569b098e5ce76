"""``clip-score``: reject the synthetic images of each class least like their class prompt under CLIP.

Score: the cosine similarity of CLIP's projected image embedding and the projected text embedding of the
class prompt (``prompt`` with ``{label}`` = the class name). Diff-Mix (Wang et al. 2024) drops the bottom
10 % of each class this way. The model comes from a local folder or a hub id (offline unless cached).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages
from synthaug.errors import MissingFileError
from synthaug.filters.base import Decision, Filter, ScoringInputs, lowest_per_class
from synthaug.filters.config import FILTERS, ClipScoreFilterConfig

BATCH = 64


def load_clip(source: str):
    """(CLIPModel, CLIPProcessor) from a folder or hub id, or a :class:`MissingFileError` saying what to give."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(source).eval(), CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise MissingFileError(
            f"filter clip-score could not load a CLIP model from {source!r} (filters.*.model): {type(e).__name__}: "
            f"{str(e)[:300]} Give a local folder with a CLIP checkpoint (config.json, weights, tokenizer files, "
            "preprocessor_config.json) or a hub id cached once with network access, e.g. "
            "openai/clip-vit-base-patch32.") from None


def _projected(out) -> torch.Tensor:
    """The projected embedding from ``get_text_features`` / ``get_image_features`` (a tensor in transformers 4,
    an output whose ``pooler_output`` holds it in transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def prompts(template: str, class_names: Sequence[str]) -> list[str]:
    return [template.replace("{label}", name.replace("_", " ")) for name in class_names]


@torch.no_grad()
def clip_scores(model, processor, images: LabeledImages, texts: Sequence[str], *, device, progress: bool = False,
                desc: str = "clip-score") -> np.ndarray:
    """Cosine similarity of every image with ``texts[its class]`` (first label group)."""
    model = model.to(device)
    tokens = processor(text=list(texts), return_tensors="pt", padding=True)
    text = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                   attention_mask=tokens["attention_mask"].to(device))
    text = torch.nn.functional.normalize(_projected(text).float(), dim=-1)
    out = []
    for start in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch", disable=not progress):
        batch = [images.image(i).convert("RGB") for i in range(start, min(start + BATCH, len(images)))]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        emb = torch.nn.functional.normalize(_projected(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        labels = torch.as_tensor(images.labels[start:start + len(batch), 0], device=device)
        out.append((emb * text[labels]).sum(-1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


@FILTERS.register("clip-score")
class ClipScoreFilter(Filter):
    name = "clip-score"
    config: ClipScoreFilterConfig

    def score(self, images: LabeledImages, inputs: ScoringInputs, *, progress: bool = False) -> dict[str, np.ndarray]:
        model, processor = load_clip(self.config.model)
        texts = prompts(self.config.prompt, images.schema.groups[0].classes)
        return {"similarity": clip_scores(model, processor, images, texts, device=inputs.device, progress=progress)}

    def decide(self, scores: dict[str, np.ndarray], classes: np.ndarray, class_names: Sequence[str]) -> Decision:
        s, q = scores["similarity"], self.config.reject_bottom_percent
        reject = lowest_per_class(s, classes, q / 100)
        reasons = [None if not r else f"CLIP similarity {s[i]:.3f} to {class_names[k]!r} in the bottom {q:g} % of its class"
                   for i, (r, k) in enumerate(zip(reject, classes))]
        return Decision(~reject, s, reasons)
