"""The memorisation check flags exact (and near-exact) copies of training images and passes fresh samples."""

import numpy as np
import torch

from synthaug.data import load_source
from synthaug.evaluate.memorisation import closest_pairs_image, memorisation, write_memorisation_csv
from synthaug.imaging import load_tensor


def test_copies_flagged_fresh_samples_pass(tmp_path):
    splits = load_source("digits")
    train, test = splits.train, splits.test
    classes = list(train.schema.groups[0].classes)
    real_pixels = load_tensor(train)
    # synthetic set: 10 exact copies and 10 lightly noised copies of training images (classes 0 and 1), and 60
    # held-out test images (same classes, never seen in training) as fresh samples
    copy_idx = np.concatenate([np.flatnonzero(train.labels[:, 0] == 0)[:10], np.flatnonzero(train.labels[:, 0] == 1)[:10]])
    fresh_idx = np.flatnonzero(np.isin(test.labels[:, 0], [0, 1, 2]))[:60]
    copies = real_pixels[copy_idx].clone()
    copies[10:] = (copies[10:] + 0.01 * torch.randn(copies[10:].shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    fake_pixels = torch.cat([copies, load_tensor(test.subset(fresh_idx))])
    fake_labels = np.concatenate([train.labels[copy_idx, 0], test.labels[fresh_idx, 0]])
    result = memorisation(fake_pixels.flatten(1), fake_pixels, fake_labels, real_pixels.flatten(1), real_pixels,
                          train.labels[:, 0], classes, extractor="pixels:test")
    flags = np.array([r["near_copy"] for r in result["images"]])
    assert flags[:20].all() and not flags[20:].any()
    assert [r["nearest_pixel"] for r in result["images"][:10]] == copy_idx[:10].tolist()  # found the very source
    assert result["per_class"]["2"]["near_copies"] == 0 and result["per_class"]["0"]["near_copies"] >= 10
    assert result["overall"]["near_copy_share"] == 20 / 80 and result["overall"]["pixel_min"] == 0.0
    assert result["extractor"] == "pixels:test" and set(result["per_class"]) == {"0", "1", "2"}

    write_memorisation_csv(result, tmp_path / "memorisation.csv")
    lines = (tmp_path / "memorisation.csv").read_text().splitlines()
    assert len(lines) == 5 and all(l.startswith("pixels:test,") for l in lines[1:])

    picture = closest_pairs_image(result, lambda i: _pil(fake_pixels[i]), train.image)
    assert picture.size[0] > 2 * 8 * 3 and picture.getbbox() is not None


def _pil(t: torch.Tensor):
    from synthaug.imaging import to_pil

    return to_pil(t[None])[0]
