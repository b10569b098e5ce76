"""Epoch time of the classifier's data loader: real + synthetic images versus real images only, at the same number
of images per epoch (goal: the mixed loader within 5 % of the real-only one).

    .venv/bin/python bench/loader.py [--images 2000] [--size 64] [--workers 0] [--repeats 5] [--cache-mb 0]

Writes PNG files (real: an image folder; synthetic: a synthetic store's images/ folder) to a temporary folder,
then times full epochs of the training loader (``ImageSet`` + ``EpochBatches`` + ``DataLoader``, augment ``soft``):
``real-only`` over N real images, ``combined`` over N/2 real + N/2 synthetic, epoch by epoch in turn, and prints
the median seconds per epoch, images/s and the median per-epoch overhead. ``--cache-mb 0`` decodes every image on every epoch (the
ImageNet-LT case); a large budget times cached epochs (the small-data case).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.train.augment import create_transform
from synthaug.train.data import EpochBatches, ImageSet, seeded_batches
from synthaug.train.loop import _collate
from synthaug.train.batch_composition import make_batches

SCHEMA = LabelSchema.single([str(c) for c in range(10)])


def write_images(folder: Path, n: int, size: int, seed: int) -> LabeledImages:
    rng = np.random.default_rng(seed)
    labels, paths = rng.integers(0, 10, n), []
    for i, label in enumerate(labels):
        path = folder / str(label) / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return LabeledImages(SCHEMA, labels[:, None], [str(p) for p in paths], paths=paths)


class EpochTimer:
    """One training loader (``ImageSet`` + ``EpochBatches`` + ``DataLoader``, augment ``soft``, batch 64)."""

    def __init__(self, real: LabeledImages, synthetic: LabeledImages | None, mixing: str, args):
        data = ImageSet(real, synthetic, create_transform("soft", 3, args.size), args.size, cache_mb=args.cache_mb)
        self.sampler = EpochBatches()
        self.loader = DataLoader(data, batch_sampler=self.sampler, collate_fn=_collate, num_workers=args.workers,
                                 persistent_workers=args.workers > 0)
        self.real, self.mixing, self.images = real, mixing, args.images
        self.synth_labels = synthetic.labels if synthetic is not None else np.zeros((0, 1), dtype=np.int64)

    def epoch(self, epoch: int) -> float:
        batches = make_batches(self.mixing, self.real.labels, self.synth_labels, batch_size=64,
                               rng=np.random.default_rng(epoch))
        self.sampler.batches = seeded_batches(batches, epoch)
        start = time.perf_counter()
        seen = sum(len(x) for x, _, _ in self.loader)
        assert seen == self.images, seen
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="images per epoch (both loaders)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (files and training)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per loader (median)")
    parser.add_argument("--cache-mb", type=float, default=0.0, help="train.image_cache_mb")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        real_all = write_images(Path(tmp) / "real", args.images, args.size, 0)
        synthetic = write_images(Path(tmp) / "synthetic" / "images", args.images // 2, args.size, 1)
        real_half = real_all.subset(np.arange(args.images - args.images // 2))
        loaders = {"real-only": EpochTimer(real_all, None, "real-only", args),
                   "combined": EpochTimer(real_half, synthetic, "combined", args)}
        times = {name: [] for name in loaders}
        for epoch in range(args.repeats + 1):  # epochs alternate, so that load from other processes hits both
            for name, loader in loaders.items():
                seconds = loader.epoch(epoch)
                if epoch:  # the first epoch warms the workers (and fills a cache)
                    times[name].append(seconds)
    print(f"{args.images} images/epoch, {args.size} px, workers={args.workers}, cache_mb={args.cache_mb}, "
          f"median of {args.repeats} epochs")
    ratios = [c / r for c, r in zip(times["combined"], times["real-only"])]
    for name, values in times.items():
        t = statistics.median(values)
        print(f"  {name:10s} {t:7.3f} s/epoch  {args.images / t:8.0f} images/s")
    print(f"  overhead of combined (median of per-epoch ratios): {100 * (statistics.median(ratios) - 1):+.1f} %")


if __name__ == "__main__":
    main()
