"""A tiny multi-attribute image set built in code: rendered shapes whose six attributes play the role of the
DeepFashion study's six groups, with the same class counts (7, 3, 3, 4, 6, 3 = 26 outputs).

Training splits draw every attribute from a long-tailed distribution; test splits draw them uniformly, so
chance accuracy of a group is 1 / its number of classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GROUPS = {
    "colour": ["red", "green", "blue", "yellow", "magenta", "cyan", "white"],
    "shape": ["wide_oval", "circle", "tall_oval"],
    "size": ["small", "medium", "large"],
    "background": ["black", "dark_gray", "navy", "maroon"],
    "texture": ["solid", "h_stripes", "v_stripes", "checker", "dots", "outline"],
    "noise": ["clean", "light_noise", "heavy_noise"],
}
SIZES = [7, 3, 3, 4, 6, 3]
_FG = [(230, 30, 30), (30, 200, 30), (40, 80, 255), (240, 230, 30), (230, 40, 230), (30, 230, 230),
       (250, 250, 250)]
_BG = [(0, 0, 0), (70, 70, 70), (0, 0, 110), (110, 0, 0)]
_PIXELS = [12, 18, 26]
_NOISE = [0.0, 12.0, 35.0]


def sample_labels(n: int, rng: np.random.Generator, *, long_tailed: bool) -> np.ndarray:
    """(n, 6) label vectors; long-tailed: class c of a group has weight 0.55^c (head → tail)."""
    cols = []
    for k in SIZES:
        p = 0.55 ** np.arange(k) if long_tailed else np.ones(k)
        cols.append(rng.choice(k, n, p=p / p.sum()))
    return np.stack(cols, 1).astype(np.int64)


def _texture(kind: int, size: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return [np.ones((size, size), bool), (y // 2) % 2 == 0, (x // 2) % 2 == 0, ((x // 3) + (y // 3)) % 2 == 0,
            (x % 4 < 2) & (y % 4 < 2), np.ones((size, size), bool)][kind]


def _silhouette(box: list[int], size: int, *, filled: bool, width: int = 1) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).ellipse(box, fill=255 if filled else None, outline=255, width=width)
    return np.asarray(img) > 0


def render(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 images (n, size, size, 3) for label vectors (colour, shape, size, background, texture, noise).

    Shapes are ovals (wide, round, tall) whose longer side is the size; every texture keeps a one-pixel edge
    around the silhouette, and "outline" is a two-pixel edge only.
    """
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for i, (colour, shape, extent, bg, texture, noise) in enumerate(labels):
        w, h = [(1.0, 0.5), (1.0, 1.0), (0.5, 1.0)][shape]
        w, h = round(_PIXELS[extent] * w), round(_PIXELS[extent] * h)
        x0, y0 = (size - w) // 2 + int(rng.integers(-2, 3)), (size - h) // 2 + int(rng.integers(-2, 3))
        box = [x0, y0, x0 + w - 1, y0 + h - 1]
        if texture == 5:
            mask = _silhouette(box, size, filled=False, width=2)
        else:
            inside = _silhouette(box, size, filled=True) & _texture(int(texture), size)
            mask = inside | _silhouette(box, size, filled=False)
        img = np.where(mask[..., None], np.asarray(_FG[colour], np.float64), np.asarray(_BG[bg], np.float64))
        img = img + rng.normal(0, _NOISE[noise], img.shape)
        out[i] = img.clip(0, 255).round().astype(np.uint8)
    return out


def make_split(n: int, seed: int, *, long_tailed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of one split."""
    rng = np.random.default_rng(seed)
    labels = sample_labels(n, rng, long_tailed=long_tailed)
    return render(labels, rng), labels


def write_split_images(root: Path, split: str, pixels: np.ndarray) -> list[str]:
    """Saves PNGs under root/img/<split>/ and returns their paths relative to ``root``."""
    (root / "img" / split).mkdir(parents=True, exist_ok=True)
    rels = []
    for i, arr in enumerate(pixels):
        rel = f"img/{split}/{i:04d}.png"
        Image.fromarray(arr).save(root / rel)
        rels.append(rel)
    return rels


def write_attribute_layout(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                           class_file: bool = True) -> Path:
    """The DeepFashion attribute layout: split/<s>.txt, split/<s>_attr.txt and split/classes.yaml."""
    lists = root / "split"
    lists.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in splits.items():
        rels = write_split_images(root, name, pixels)
        (lists / f"{name}.txt").write_text("".join(r + "\n" for r in rels))
        (lists / f"{name}_attr.txt").write_text("".join(" ".join(map(str, v)) + "\n" for v in labels))
    if class_file:
        (lists / "classes.yaml").write_text("".join(f"{g}: {' '.join(c)}\n" for g, c in GROUPS.items()))
    return root


def write_manifest(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A CSV manifest with one column per attribute group and a split column."""
    lines = ["image," + ",".join(GROUPS) + ",split"]
    for name, (pixels, labels) in splits.items():
        rels = write_split_images(root, name, pixels)
        for rel, vec in zip(rels, labels):
            names = [GROUPS[g][c] for g, c in zip(GROUPS, vec)]
            lines.append(",".join([rel, *names, name]))
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
