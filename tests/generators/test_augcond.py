"""Augmentation-conditioning maths: method names, Mixup, CutMix (Yun et al. 2019), embedding dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.generators.augcond import (
    METHODS, cutmix, cutmix_box, cutmix_embedding, embedding_dropout, mixup, parse_method, sample_lambda,
)


def test_method_names_parse_to_recipes():
    assert len(METHODS) == 10
    assert parse_method("random-image") == parse_method("random-image")
    r = parse_method("random-image")
    assert (r.blend, r.dropout, r.num_images) == (None, False, 1)
    r = parse_method("dropout")
    assert (r.blend, r.dropout, r.num_images) == (None, True, 1)
    r = parse_method("embed-cutmix-dropout")
    assert (r.blend, r.space, r.dropout, r.num_images) == ("cutmix", "embedding", True, 2)
    r = parse_method("mixup")
    assert (r.blend, r.space, r.dropout) == ("mixup", "pixel", False)
    with pytest.raises(ValueError, match="valid: random-image"):
        parse_method("cutout")


def test_mixup_is_the_convex_combination():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    for lam in (0.0, 0.3, 1.0):
        assert torch.allclose(mixup(a, b, lam), lam * a + (1 - lam) * b)
    lams = [sample_lambda(1.0, np.random.default_rng(s)) for s in range(200)]
    assert all(0 <= x <= 1 for x in lams) and 0.4 < float(np.mean(lams)) < 0.6
    with pytest.raises(ValueError, match="mix_alpha"):
        sample_lambda(0.0, np.random.default_rng(0))


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_cutmix_pastes_one_box_whose_area_matches_lambda(size):
    h, w = size
    first, second = torch.zeros(3, h, w), torch.ones(3, h, w)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        lam = sample_lambda(1.0, rng)
        mixed, lam_adj = cutmix(first, second, lam, rng)
        pasted = mixed[0] == 1
        assert pasted.sum().item() == pytest.approx((1 - lam_adj) * h * w)
        assert torch.equal(mixed[1:] == 1, pasted.expand(2, h, w))  # same box in every channel
        if pasted.any():  # a single axis-aligned rectangle
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            assert pasted.sum().item() == len(rows) * len(cols)
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)


def test_cutmix_box_area_is_one_minus_lambda_unless_clipped():
    """λ = 0.75 on 100 × 100: sides 50; a box whose centre is at least 25 from every border is unclipped and
    has the area (1 − λ)·H·W exactly; the others are clipped smaller. Both kinds occur among the seeds."""
    unclipped = clipped = 0
    for seed in range(20):
        top, bottom, left, right = cutmix_box(100, 100, 0.75, np.random.default_rng(seed))
        area = (bottom - top) * (right - left)
        if 25 <= (top + bottom) / 2 <= 75 and 25 <= (left + right) / 2 <= 75:
            assert area == 50 * 50, seed
            unclipped += 1
        else:
            assert area < 50 * 50, seed
            clipped += 1
    assert unclipped >= 3 and clipped >= 3  # the branches above ran


def test_cutmix_embedding_pastes_one_span():
    a, b = torch.zeros(64), torch.ones(64)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        mixed, lam_adj = cutmix_embedding(a, b, sample_lambda(1.0, rng), rng)
        idx = (mixed == 1).nonzero().flatten()
        assert len(idx) == pytest.approx((1 - lam_adj) * 64)
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx)


def test_dropout_zeroes_about_p_and_rescales():
    x = torch.rand(20_000) + 0.5
    out = embedding_dropout(x, 0.4, np.random.default_rng(0))
    zero = out == 0
    assert 0.38 < zero.float().mean().item() < 0.42
    assert torch.allclose(out[~zero], x[~zero] / 0.6)
    plain = embedding_dropout(x, 0.4, np.random.default_rng(0), rescale=False)
    assert torch.equal(plain == 0, zero) and torch.equal(plain[~zero], x[~zero])
    assert torch.equal(embedding_dropout(x, 0.0, np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match="dropout p"):
        embedding_dropout(x, 1.0, np.random.default_rng(0))
