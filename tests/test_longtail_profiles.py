"""Training-subset profiles (issue 23): the exact CIFAR-LT construction of LDAM-DRW (cao2019), the rounded profile
unchanged, validation from left-out images, few-shot draws, and the training subset's SHA-256."""

import hashlib
import logging

import numpy as np
import pytest

from synthaug.data import ClassStats, LabeledImages, LabelSchema, ShotThresholds, longtail_subsample
from synthaug.data.longtail import (
    apply_longtail_profile, cao2019_counts, cao2019_indices, carve_validation, fewshot_subsample,
    official_train_indices, training_subset_sha256,
)
from synthaug.errors import SettingError


def ldam_drw_reference(targets, cls_num, imb_factor):
    """LDAM-DRW's IMBALANCECIFAR (Cao et al., 2019, imbalance_cifar.py), as it is written there."""
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        img_max = len(targets) / cls_num
        img_num_per_cls = []
        for cls_idx in range(cls_num):
            num = img_max * (imb_factor**(cls_idx / (cls_num - 1.0)))
            img_num_per_cls.append(int(num))
        targets_np = np.array(targets, dtype=np.int64)
        classes = np.unique(targets_np)
        kept = []
        for the_class, the_img_num in zip(classes, img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            selec_idx = idx[:the_img_num]
            kept.append(selec_idx)
        return np.concatenate(kept), img_num_per_cls
    finally:
        np.random.set_state(saved)


def official_size_labels(num_classes):
    """50,000 training labels, every class the same size, in a shuffled order as in data_batch_1..5."""
    return np.random.default_rng(23).permutation(np.repeat(np.arange(num_classes), 50_000 // num_classes))


@pytest.mark.parametrize("num_classes, totals", [(10, {100: 12_406, 50: 13_996, 10: 20_431}),
                                                 (100, {100: 10_847, 50: 12_608, 10: 19_573})])
def test_cao2019_equals_the_reference_index_for_index(num_classes, totals):
    labels = official_size_labels(num_classes)
    for rho, total in totals.items():
        ours = cao2019_indices(labels, num_classes, rho)
        reference, counts = ldam_drw_reference(labels.tolist(), num_classes, 1 / rho)
        np.testing.assert_array_equal(ours, reference)
        assert len(ours) == sum(counts) == total
        assert np.bincount(labels[ours], minlength=num_classes).tolist() == counts


def test_cao2019_counts_cifar10_and_cifar100_shot_groups():
    assert cao2019_counts(5000.0, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    counts = np.array(cao2019_counts(500.0, 100, 100))
    groups = ClassStats(LabelSchema.single([str(c) for c in range(100)]), [counts], ShotThresholds(100, 20))
    sizes = {name: len(members) for name, members in groups.shot_groups().items()}
    assert sizes == {"many": 35, "medium": 35, "few": 30}
    assert counts[0] == 500 and counts[-1] == 5


def images_of(labels, prefix="x"):
    labels = np.asarray(labels)
    classes = [f"c{i}" for i in range(labels.max() + 1)]
    return LabeledImages(LabelSchema.single(classes), labels[:, None], [f"{prefix}{i}" for i in range(len(labels))],
                         pixels=np.zeros((len(labels), 1, 1), np.uint8), mode="L")


def test_cao2019_subset_is_sorted_and_independent_of_the_seed():
    labels = official_size_labels(10)
    full = images_of(labels)
    a = apply_longtail_profile(full, profile="cao2019", imbalance_ratio=100, seed=0)
    b = apply_longtail_profile(full, profile="cao2019", imbalance_ratio=100, seed=7)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.labels[:, 0], labels[np.sort(cao2019_indices(labels, 10, 100))])
    assert a.ids == [f"x{i}" for i in np.sort(cao2019_indices(labels, 10, 100))]


@pytest.mark.parametrize("option", [{"class_order": "reverse"}, {"class_order": ["c1", "c0"]}, {"n_max": 10}])
def test_cao2019_refuses_class_order_and_n_max(option):
    with pytest.raises(SettingError, match="cao2019 reproduces CIFAR-LT exactly.*profile: rounded"):
        apply_longtail_profile(images_of([0, 1] * 20), profile="cao2019", imbalance_ratio=10, seed=0, **option)


def test_cao2019_refuses_data_that_is_not_balanced():
    with pytest.raises(SettingError, match="keeps 8 images of class 0, but it has 4"):
        cao2019_indices(np.array([0] * 4 + [1] * 12), 2, 10)


def test_rounded_profile_is_unchanged():
    full = images_of(np.random.default_rng(0).integers(0, 5, 300))
    a = apply_longtail_profile(full, profile="rounded", imbalance_ratio=10, seed=3, class_order="random")
    b = longtail_subsample(full, imbalance_ratio=10, seed=3, class_order="random")
    assert a.ids == b.ids
    # pinned before issue 23: run folders recorded with the rounded profile keep their fingerprints
    assert hashlib.sha256("\n".join(a.ids).encode()).hexdigest()[:16] == "73a6c63b4b8ba13f"  # as at 7a50a23


# ------------------------------------------------------------------------------------------ validation
def test_validation_comes_from_left_out_images_only(caplog):
    labels = np.repeat(np.arange(4), 30)
    full = images_of(labels)
    kept = apply_longtail_profile(full, profile="cao2019", imbalance_ratio=10, seed=0)
    with caplog.at_level(logging.WARNING):
        train, val, pool = carve_validation(full, kept, per_class=5, seed=0)
    assert train.ids == kept.ids
    assert not set(val.ids) & set(kept.ids)
    assert val.class_counts().tolist() == [0, 5, 5, 5]  # the head class keeps all its 30 images
    assert "'c0' (0)" in caplog.text
    assert set(pool.ids) == set(full.ids) - set(val.ids)
    assert carve_validation(full, kept, per_class=5, seed=1)[1].ids != val.ids


def test_validation_without_long_tail_is_carved_from_the_training_set():
    full = images_of(np.repeat(np.arange(3), 10))
    train, val, pool = carve_validation(full, None, per_class=2, seed=0)
    assert val.class_counts().tolist() == [2, 2, 2]
    assert sorted(train.ids + val.ids) == sorted(full.ids) and pool.ids == train.ids
    train, val, _ = carve_validation(full, None, per_class=0, seed=0)
    assert len(val) == 0 and train.ids == full.ids


# ------------------------------------------------------------------------------------------ few-shot
def test_fewshot_keeps_k_per_class_and_draws_differ():
    full = images_of(np.repeat(np.arange(5), [40, 30, 20, 10, 8]))
    draw0 = fewshot_subsample(full, shots=4, draw=0)
    assert draw0.class_counts().tolist() == [4] * 5
    assert fewshot_subsample(full, shots=4, draw=0).ids == draw0.ids
    assert fewshot_subsample(full, shots=4, draw=1).ids != draw0.ids
    assert set(draw0.ids) <= set(full.ids)
    with pytest.raises(SettingError, match=r"shots is 9, but class\(es\) 'c4' \(8\) have fewer"):
        fewshot_subsample(full, shots=9, draw=0)


# ------------------------------------------------------------------------------------------ fingerprint
def test_training_subset_sha256_format():
    expected = hashlib.sha256(b"1\n2\n10\n").hexdigest()  # sorted as numbers, one per line, each ending in \n
    assert training_subset_sha256([10, 2, 1]) == expected
    assert training_subset_sha256(np.array([2, 10, 1])) == expected


def test_official_train_indices_from_ids():
    np.testing.assert_array_equal(official_train_indices(["cifar10:train:7", "cifar10:train:3"]), [7, 3])
    assert official_train_indices(["cifar10:train:7", "cifar100:train:3"]) is None
    assert official_train_indices(["digits:7"]) is None
    assert official_train_indices(["cat/001.png"]) is None
    assert official_train_indices([]) is None
