import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthaug.train.losses import LOSSES, CrossEntropy, class_weights, create_loss


def test_balanced_softmax_equals_ce_under_uniform_prior():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16, 1))
    bsm = create_loss("balanced-softmax", [np.full(5, 40)])
    ce = create_loss("ce", [np.full(5, 40)])
    assert torch.allclose(bsm(logits, y), ce(logits, y))
    assert torch.allclose(ce(logits, y), F.cross_entropy(logits, y[:, 0]))


def test_balanced_softmax_shifts_by_log_prior():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 3), torch.randint(0, 3, (16, 1))
    counts = np.array([100, 10, 1])
    expected = F.cross_entropy(logits + torch.log(torch.tensor(counts / counts.sum())).float(), y[:, 0])
    assert torch.allclose(create_loss("balanced-softmax", [counts])(logits, y), expected)
    assert not torch.allclose(create_loss("ce", [counts])(logits, y), expected)


def test_weighted_ce_is_an_unnormalised_sum_that_k_scales():
    counts = [np.array([250, 50, 11])]
    w = class_weights(counts, k=250 / 11)[0]
    assert torch.allclose(w, torch.tensor([250 / 11 / 250, 250 / 11 / 50, 250 / 11 / 11]).float())
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8, 1))
    loss = create_loss("weighted-ce", counts, weight_k=250 / 11)(logits, y)
    # Σ_b w_{y_b} CE_b / B, not PyTorch's weighted mean (which divides by Σ_b w_{y_b}, so k cancels)
    assert torch.allclose(loss, F.cross_entropy(logits, y[:, 0], weight=w, reduction="sum") / 8)
    assert not torch.allclose(loss, F.cross_entropy(logits, y[:, 0], weight=w))
    unit = create_loss("weighted-ce", counts, weight_k=1.0)(logits, y)
    assert torch.allclose(loss, unit * 250 / 11)  # k scales the loss
    smoothed = create_loss("weighted-ce", counts, weight_k=3.0, label_smoothing=0.1)(logits, y)
    expected = F.cross_entropy(logits, y[:, 0], weight=class_weights(counts, 3.0)[0], label_smoothing=0.1,
                               reduction="sum") / 8
    assert torch.allclose(smoothed, expected)


def test_losses_take_explicit_options_and_create_loss_passes_only_theirs():
    for name in LOSSES.names():
        parameters = inspect.signature(LOSSES.get(name)).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in parameters), name
    counts = [np.array([5, 1])]
    assert isinstance(create_loss("ce", counts, weight_k=3.0), CrossEntropy)  # weight_k is not passed to ce
    with pytest.raises(TypeError, match="weight_k"):
        CrossEntropy(counts, weight_k=3.0)
    with pytest.raises(TypeError, match="prior_counts"):
        create_loss("balanced-softmax", counts, prior_counts=counts)


def test_multi_group_loss_is_sum_over_sliced_groups():
    torch.manual_seed(0)
    sizes = [7, 3, 3, 4, 6, 3]
    logits = torch.randn(4, sum(sizes))
    y = torch.stack([torch.randint(0, n, (4,)) for n in sizes], 1)
    loss = create_loss("ce", [np.ones(n) for n in sizes], label_smoothing=0.1)(logits, y)
    parts = torch.split(logits, sizes, 1)
    expected = sum(F.cross_entropy(p, y[:, g], label_smoothing=0.1) for g, p in enumerate(parts))
    assert torch.allclose(loss, expected)
