import numpy as np
import pytest

from synthaug.data import LabeledImages, LabelSchema, longtail_counts, longtail_subsample


def test_counts_follow_exponential_profile():
    assert longtail_counts(400, 10, 100) == [400, 240, 144, 86, 52, 31, 19, 11, 7, 4]
    counts = longtail_counts(500, 10, 10)
    assert counts[0] == 500 and counts[-1] == 50
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert longtail_counts(100, 5, 1) == [100] * 5


def test_counts_reject_bad_ratio():
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_counts(100, 10, 0.5)


def _toy(n_per_class=50, classes=4):
    labels = np.repeat(np.arange(classes), n_per_class)
    pixels = np.zeros((len(labels), 4, 4), dtype=np.uint8)
    return LabeledImages(LabelSchema.single([f"c{i}" for i in range(classes)]), labels[:, None],
                         [f"x{i}" for i in range(len(labels))], pixels=pixels, mode="L")


def test_subsample_is_deterministic_and_matches_profile():
    data = _toy()
    a = longtail_subsample(data, imbalance_ratio=10, seed=3)
    b = longtail_subsample(data, imbalance_ratio=10, seed=3)
    c = longtail_subsample(data, imbalance_ratio=10, seed=4)
    assert a.ids == b.ids
    assert a.ids != c.ids
    assert a.class_counts().tolist() == longtail_counts(50, 4, 10)


def test_class_order_puts_named_class_at_head():
    data = _toy()
    lt = longtail_subsample(data, imbalance_ratio=10, seed=0, class_order=["c3", "c2", "c1", "c0"])
    assert lt.class_counts().tolist() == longtail_counts(50, 4, 10)[::-1]
    with pytest.raises(ValueError, match="every class"):
        longtail_subsample(data, imbalance_ratio=10, seed=0, class_order=["c3", "c2"])


def test_subsample_refuses_quota_above_class_size():
    with pytest.raises(ValueError, match="n_max"):
        longtail_subsample(_toy(), imbalance_ratio=10, seed=0, n_max=80)
