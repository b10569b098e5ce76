import numpy as np
import torch
import torch.nn.functional as F

from synthaug.train.losses import class_weights, create_loss


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


def test_weighted_ce_uses_k_over_count():
    counts = [np.array([250, 50, 11])]
    w = class_weights(counts, k=250 / 11)[0]
    assert torch.allclose(w, torch.tensor([250 / 11 / 250, 250 / 11 / 50, 250 / 11 / 11]).float())
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8, 1))
    loss = create_loss("weighted-ce", counts, weight_k=250 / 11)(logits, y)
    assert torch.allclose(loss, F.cross_entropy(logits, y[:, 0], weight=w))


def test_multi_group_loss_is_sum_over_sliced_groups():
    torch.manual_seed(0)
    sizes = [7, 3, 3, 4, 6, 3]
    logits = torch.randn(4, sum(sizes))
    y = torch.stack([torch.randint(0, n, (4,)) for n in sizes], 1)
    loss = create_loss("ce", [np.ones(n) for n in sizes], label_smoothing=0.1)(logits, y)
    parts = torch.split(logits, sizes, 1)
    expected = sum(F.cross_entropy(p, y[:, g], label_smoothing=0.1) for g, p in enumerate(parts))
    assert torch.allclose(loss, expected)
