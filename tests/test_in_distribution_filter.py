"""The ``in-distribution`` filter's per-class threshold (DiffuLT's approximately in-distribution samples): a
synthetic image is kept when its distance to its class's real centre lies within the class's own real spread,
measured per class, with classes of few real images borrowing the pooled spread's shape."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug.config import build_config
from synthaug.errors import ConfigError
from synthaug.filters.base import create_filter
from synthaug.filters.in_distribution import empirical_quantile, leave_one_out_distances, real_quantiles


def gaussian(rng, n: int, centre: float, spread: float, dim: int = 8) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, dim))


def at_distance(centre: np.ndarray, distance: float, dim: int = 8) -> np.ndarray:
    direction = np.zeros(dim)
    direction[0] = 1.0
    return centre + distance * direction


def filter_with(quantile: float = 0.9, min_class_images: int = 10):
    cfg = build_config({"arms": [{"name": "oversample", "train": {"mixing": "oversample"}},
                                 {"name": "synth", "synthetic": "generated"}],
                        "filters": [{"name": "in-distribution", "quantile": quantile,
                                     "min_class_images": min_class_images}]})
    return create_filter(cfg.filters[0])


def test_leave_one_out_and_quantile_helpers():
    x = np.array([[0.0], [1.0], [2.0]])
    # row 0 against the mean of rows 1, 2 (1.5), etc.
    assert leave_one_out_distances(x) == pytest.approx([1.5, 0.0, 1.5])
    assert len(leave_one_out_distances(x[:1])) == 0
    assert empirical_quantile(np.array([-1.0, 1.0, 5.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx([0, 0.5, 1])


def test_the_threshold_is_per_class():
    """The same distance is inside a spread-out class and outside a tight one."""
    rng = np.random.default_rng(0)
    tight, wide = gaussian(rng, 50, 0.0, 0.05), gaussian(rng, 50, 10.0, 1.0)
    f_real = np.concatenate([tight, wide])
    y_real = np.repeat([0, 1], 50)
    f_synth = np.stack([at_distance(tight.mean(0), 1.0), at_distance(wide.mean(0), 1.0),
                        at_distance(tight.mean(0), 0.05), at_distance(wide.mean(0), 10.0)])
    y_synth = np.array([0, 1, 0, 1])
    distance, q = real_quantiles(f_real, y_real, f_synth, y_synth, num_classes=2, min_class_images=10)
    assert distance[:2] == pytest.approx([1.0, 1.0], rel=1e-6)
    decision = filter_with(0.9).decide({"centre_distance": distance, "real_quantile": q}, y_synth, ["a", "b"])
    assert decision.keep.tolist() == [False, True, True, False]
    assert "real quantile" in decision.reasons[0] and decision.reasons[1] is None


def test_a_class_of_four_images_borrows_the_pooled_spread_at_its_own_scale():
    rng = np.random.default_rng(1)
    f_real = np.concatenate([gaussian(rng, 60, 0.0, 1.0), gaussian(rng, 60, 20.0, 1.0), gaussian(rng, 4, -20.0, 3.0)])
    y_real = np.repeat([0, 1, 2], [60, 60, 4])
    centre = f_real[y_real == 2].mean(0)
    own = np.median(leave_one_out_distances(f_real[y_real == 2]))
    f_synth = np.stack([at_distance(centre, 0.5 * own), at_distance(centre, own), at_distance(centre, 10 * own)])
    y_synth = np.array([2, 2, 2])
    _, q = real_quantiles(f_real, y_real, f_synth, y_synth, num_classes=3, min_class_images=10)
    assert np.all(np.isfinite(q))
    assert q[0] < q[1] < q[2]
    assert 0.2 < q[1] < 0.8  # its own median distance sits mid-spread: the scale is the class's own
    assert q[2] == 1.0
    keep = filter_with(0.95).decide({"centre_distance": q, "real_quantile": q}, y_synth, ["a", "b", "c"]).keep
    assert keep.tolist() == [True, True, False]


def test_a_class_with_one_or_no_real_image():
    rng = np.random.default_rng(2)
    f_real = np.concatenate([gaussian(rng, 30, 0.0, 1.0), gaussian(rng, 1, 5.0, 1.0)])
    y_real = np.repeat([0, 1], [30, 1])
    f_synth = np.stack([f_real[-1] + 0.01, f_real[0]])
    y_synth = np.array([1, 2])  # class 2 has no real image: no centre to measure from
    distance, q = real_quantiles(f_real, y_real, f_synth, y_synth, num_classes=3, min_class_images=10)
    assert np.isfinite(q[0]) and q[0] < 0.1  # next to its only real image, at the other classes' median scale
    assert np.isnan(q[1]) and np.isnan(distance[1])
    decision = filter_with(0.95).decide({"centre_distance": distance, "real_quantile": q}, y_synth, ["a", "b", "c"])
    assert decision.keep.tolist() == [True, False]
    assert "no real training image" in decision.reasons[1]


def test_the_scoring_classifier_must_be_a_real_only_arm():
    with pytest.raises(ConfigError, match="filters.0.classifier_arm 'synth' must name a real-only arm"):
        build_config({"arms": [{"name": "synth", "synthetic": "generated"}],
                      "filters": [{"name": "in-distribution", "classifier_arm": "synth"}]})
    with pytest.raises(Exception, match="quantile"):
        build_config({"arms": [{"name": "oversample"}], "filters": [{"name": "in-distribution", "quantile": 0}]})
