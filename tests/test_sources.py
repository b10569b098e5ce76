import json

import numpy as np
import pytest
from PIL import Image

from synthaug.data import ClassStats, DataError, ShotThresholds, load_source


def test_mnist5k_has_fixed_balanced_splits():
    a = load_source("mnist5k")
    b = load_source("mnist5k")
    assert a.test.class_counts().tolist() == [100] * 10
    assert a.val.class_counts().tolist() == [20] * 10
    assert a.train.class_counts().tolist() == [380] * 10
    assert a.test.ids == b.test.ids
    assert not set(a.test.ids) & set(a.train.ids)
    assert a.train.image(0).size == (28, 28) and a.train.mode == "L"
    assert load_source("mnist5k", split_seed=1).test.ids != a.test.ids


def test_digits_source():
    d = load_source("digits")
    assert d.test.class_counts().tolist() == [30] * 10
    assert d.train.image(0).size == (8, 8)
    assert d.train.pixels.max() == 255


def test_imagefolder_loads_and_carves_balanced_test(image_tree):
    root = image_tree()
    d = load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)
    assert d.schema.groups[0].classes == ("cat", "dog", "owl")
    assert d.test.class_counts().tolist() == [2, 2, 2]
    assert d.train.class_counts().tolist() == [9, 5, 3]
    assert d.train.image(0).mode == "RGB"


def test_imagefolder_explicit_splits(image_tree, tmp_path):
    image_tree(tmp_path / "data" / "train")
    image_tree(tmp_path / "data" / "test", counts=(2, 2, 2))
    d = load_source("imagefolder", root=tmp_path / "data")
    assert len(d.train) == 26 and len(d.test) == 6 and len(d.val) == 0


def test_corrupt_image_is_named_or_skipped(image_tree):
    root = image_tree()
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png.*corrupt"):
        load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)
    d = load_source("imagefolder", root=root, test_per_class=2, val_per_class=1, on_bad_image="skip")
    assert len(d.train.skipped) == 1 and "broken.png" in d.train.skipped[0]
    assert len(d.train) + len(d.val) + len(d.test) == 26


def test_empty_class_folder_is_an_error(image_tree):
    root = image_tree()
    (root / "emu").mkdir()
    with pytest.raises(DataError, match="emu.*no images"):
        load_source("imagefolder", root=root)


def _manifest(tmp_path, rows, suffix=".csv"):
    img = tmp_path / "imgs"
    img.mkdir(exist_ok=True)
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(img / f"{i}.png")
    path = tmp_path / f"labels{suffix}"
    if suffix == ".csv":
        path.write_text("image,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    else:
        path.write_text("".join(json.dumps({"image": p, "label": lab}) + "\n" for p, lab in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_resolves_relative_paths(tmp_path, suffix):
    rows = [(f"imgs/{i}.png", "a" if i < 8 else "b") for i in range(12)]
    d = load_source("manifest", manifest=_manifest(tmp_path, rows, suffix), test_per_class=1, val_per_class=1)
    assert d.schema.groups[0].classes == ("a", "b")
    assert len(d.train) == 8 and d.train.paths[0].is_file()


def test_manifest_unknown_label_names_line(tmp_path):
    rows = [(f"imgs/{i}.png", "a") for i in range(5)] + [("imgs/5.png", "zebra")]
    path = _manifest(tmp_path, rows)
    with pytest.raises(DataError, match=r"labels\.csv line 7: unknown label 'zebra'"):
        load_source("manifest", manifest=path, classes=["a", "b"])


def test_manifest_missing_file_names_line(tmp_path):
    rows = [(f"imgs/{i}.png", "a" if i % 2 else "b") for i in range(10)] + [("imgs/missing.png", "a")]
    with pytest.raises(DataError, match=r"missing\.png \(labels\.csv line 12\): file not found"):
        load_source("manifest", manifest=_manifest(tmp_path, rows), test_per_class=1, val_per_class=1)


def test_manifest_declared_class_without_images_is_an_error(tmp_path):
    rows = [(f"imgs/{i}.png", "a") for i in range(10)]
    with pytest.raises(DataError, match=r"\['b'\].*no images"):
        load_source("manifest", manifest=_manifest(tmp_path, rows), classes=["a", "b"], test_per_class=1,
                    val_per_class=1)


def test_stats_groups_and_chart(tmp_path):
    from synthaug.data import LabelSchema

    schema = LabelSchema.single(list("abcd"))
    labels = np.repeat(np.arange(4), [300, 100, 20, 5])
    stats = ClassStats.from_labels(schema, labels, ShotThresholds(many=100, few=20))
    assert stats.shot_groups() == {"many": [0], "medium": [1, 2], "few": [3]}
    assert stats.imbalance_ratio() == 60
    assert "imbalance ratio 60.0" in stats.format()
    png = stats.bar_chart(tmp_path / "counts.png")
    assert Image.open(png).size[0] > 100


def test_a_hard_linked_copy_is_one_image_listed_twice(image_tree, tmp_path):
    """Two names of one file (a hard link, as a copy made with `cp -l`) would count the image twice, or leak it
    from train into test: refused, naming both lines."""
    import os

    root = image_tree()
    lines = ["image,label,split"]
    lines += [f"{p.relative_to(root)},{p.parent.name},train" for p in sorted(root.rglob("*.png"))]
    first = sorted((root / "owl").glob("*.png"))[0]
    os.link(first, root / "owl" / "copy.png")
    lines.append("owl/copy.png,owl,test")
    manifest = root / "labels.csv"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"listed twice under two names, labels\.csv line \d+ \(as .*owl.*\) and "
                                        r"labels\.csv line \d+ \(as .*copy\.png\): one file \(in split 'train' and "
                                        r"in split 'test'"):
        load_source("manifest", manifest=manifest)
