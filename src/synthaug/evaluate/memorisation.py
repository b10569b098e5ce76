"""Memorisation check: for every synthetic image, its nearest real *training* image of the same class, in an
extractor's feature space and in pixels, per class as a distribution plus the share of near-copies.

A near-copy is a synthetic image whose pixel RMS distance (images in [0, 1]) to its nearest real image is at
most ``pixel_threshold``, or whose feature distance is at most ``feature_ratio`` times the class's typical
real-to-real nearest-neighbour distance (the median over the class's real images; the median over all classes
for a class with a single real image). A DDPM trained on 4 images of a class may simply copy them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from synthaug.evaluate.precision_recall import knn_radii

MEMORISATION_COLUMNS = ["class", "n_synthetic", "n_real", "pixel_min", "pixel_median", "feature_ratio_min",
                        "feature_ratio_median", "near_copies", "near_copy_share"]


def nearest_same_class(fake: torch.Tensor, fake_labels: np.ndarray, real: torch.Tensor,
                       real_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index into ``real``) of every fake row's nearest real row of the same class; (inf, -1) when
    the class has no real row."""
    dist = np.full(len(fake), np.inf)
    index = np.full(len(fake), -1, dtype=np.int64)
    for c in np.unique(fake_labels):
        f_idx, r_idx = np.flatnonzero(fake_labels == c), np.flatnonzero(real_labels == c)
        if not len(r_idx):
            continue
        d = torch.cdist(fake[f_idx].double(), real[r_idx].double())
        best = d.min(dim=1)
        dist[f_idx] = best.values.numpy()
        index[f_idx] = r_idx[best.indices.numpy()]
    return dist, index


def real_spacing(real: torch.Tensor, real_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, the median distance of a real image to its nearest other real image of the class (NaN for a
    class with fewer than 2 real images; filled with the median over classes)."""
    spacing = np.full(num_classes, np.nan)
    for c in range(num_classes):
        idx = np.flatnonzero(real_labels == c)
        if len(idx) >= 2:
            spacing[c] = float(knn_radii(real[idx].double(), 1).median())
    fill = np.nanmedian(spacing) if np.isfinite(spacing).any() else 1.0
    return np.where(np.isfinite(spacing), spacing, fill)


def memorisation(fake_features: torch.Tensor, fake_pixels: torch.Tensor, fake_labels: np.ndarray,
                 real_features: torch.Tensor, real_pixels: torch.Tensor, real_labels: np.ndarray,
                 class_names: Sequence[str], *, extractor: str, pixel_threshold: float = 0.05,
                 feature_ratio: float = 0.1) -> dict:
    """Nearest same-class real training image of every synthetic image, and per-class summaries.

    Args:
        fake_features, real_features: (N, d) features from one extractor.
        fake_pixels, real_pixels: (N, C, H, W) images in [0, 1] at one size.
        pixel_threshold: RMS pixel distance at or under which a synthetic image is a near-copy.
        feature_ratio: feature distance / the class's real spacing at or under which it is a near-copy.

    Returns:
        ``{"extractor", "pixel_threshold", "feature_ratio", "overall": {...}, "per_class": {class: {...}},
        "images": [per synthetic image: class, pixel_rms, feature_ratio, nearest_pixel, nearest_feature,
        near_copy]}``.
    """
    fake_labels, real_labels = np.asarray(fake_labels), np.asarray(real_labels)
    n_pixels = fake_pixels[0].numel()
    pix_d, pix_i = nearest_same_class(fake_pixels.flatten(1), fake_labels, real_pixels.flatten(1), real_labels)
    pix_rms = pix_d / np.sqrt(n_pixels)  # Euclidean distance → root-mean-square per pixel value
    feat_d, feat_i = nearest_same_class(fake_features, fake_labels, real_features, real_labels)
    spacing = real_spacing(real_features, real_labels, len(class_names))
    ratio = feat_d / np.maximum(spacing[fake_labels], 1e-12)
    near = (pix_rms <= pixel_threshold) | (ratio <= feature_ratio)

    def summary(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        return {"n_synthetic": n, "n_real": int(np.isin(real_labels, np.unique(fake_labels[mask])).sum()),
                "pixel_min": float(pix_rms[mask].min()), "pixel_median": float(np.median(pix_rms[mask])),
                "pixel_quartiles": [float(q) for q in np.quantile(pix_rms[mask], [0.25, 0.5, 0.75])],
                "feature_ratio_min": float(ratio[mask].min()),
                "feature_ratio_median": float(np.median(ratio[mask])),
                "near_copies": int(near[mask].sum()), "near_copy_share": float(near[mask].mean())}

    per_class = {name: summary(fake_labels == c) for c, name in enumerate(class_names) if (fake_labels == c).any()}
    images = [{"class": class_names[int(c)], "pixel_rms": float(p), "feature_ratio": float(r),
               "nearest_pixel": int(i), "nearest_feature": int(j), "near_copy": bool(n)}
              for c, p, r, i, j, n in zip(fake_labels, pix_rms, ratio, pix_i, feat_i, near)]
    return {"extractor": extractor, "pixel_threshold": pixel_threshold, "feature_ratio": feature_ratio,
            "overall": summary(np.ones(len(fake_labels), dtype=bool)), "per_class": per_class, "images": images}


def write_memorisation_csv(result: dict, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["extractor", *MEMORISATION_COLUMNS])
        for name, m in [("(all)", result["overall"]), *result["per_class"].items()]:
            writer.writerow([result["extractor"], name, *(f"{m[c]:.4g}" if isinstance(m[c], float) else m[c]
                                                           for c in MEMORISATION_COLUMNS[1:])])


def closest_pairs_image(result: dict, fake_image, real_image, *, max_pairs: int = 32, scale: int = 3) -> Image.Image:
    """A grid of the closest (synthetic | nearest real, in pixels) pairs: one per class, closest first, at most
    ``max_pairs``; each pair captioned with its class and RMS distance (red when it is a near-copy).

    Args:
        fake_image, real_image: ``index -> PIL image`` for the synthetic and the real training set.
    """
    best: dict[str, int] = {}
    for i, rec in enumerate(result["images"]):
        if rec["nearest_pixel"] >= 0 and (rec["class"] not in best
                                          or rec["pixel_rms"] < result["images"][best[rec["class"]]]["pixel_rms"]):
            best[rec["class"]] = i
    chosen = sorted(best.values(), key=lambda i: result["images"][i]["pixel_rms"])[:max_pairs]
    if not chosen:
        return Image.new("RGB", (64, 16), "white")
    w, h = fake_image(chosen[0]).size
    w, h = w * scale, h * scale
    cols = min(4, len(chosen))
    rows = -(-len(chosen) // cols)
    pair_w, cap = 2 * w + 8, 14
    canvas = Image.new("RGB", (cols * (pair_w + 12), rows * (h + cap + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(chosen):
        rec = result["images"][i]
        x, y = (k % cols) * (pair_w + 12), (k // cols) * (h + cap + 6)
        canvas.paste(fake_image(i).convert("RGB").resize((w, h), Image.NEAREST), (x, y + cap))
        canvas.paste(real_image(rec["nearest_pixel"]).convert("RGB").resize((w, h), Image.NEAREST), (x + w + 8, y + cap))
        draw.text((x, y), f"{rec['class']}: {rec['pixel_rms']:.3f}", fill="red" if rec["near_copy"] else "black")
    return canvas
