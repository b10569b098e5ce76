"""``image-list`` (ImageNet-LT / Places-LT split lists) and ``inaturalist`` (COCO-style json) sources, on tiny
fixtures in the official layouts: real JPEG/PNG files under ``root`` and the list / json files as released."""

import json
import logging

import numpy as np
import pytest
import yaml
from PIL import Image

from synthaug.data import DataError, load_source

# ImageNet-LT: two classes share the human name "crane" (n02012849 the bird, n03126707 the machine)
SYNSETS = ["n01440764", "n02012849", "n03126707", "n01443537"]
NAMES = ["tench", "crane", "crane", "goldfish"]
TRAIN_COUNTS = [6, 5, 4, 3]


def _image(path, value, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format=fmt)


def _imagenet_lt(root, *, val=True, train_counts=TRAIN_COUNTS):
    """root/train/<synset>/<synset>_<k>.JPEG and root/val/<synset>/ILSVRC2012_val_<k>.JPEG, with the three lists
    ``ImageNet_LT_{train,val,test}.txt`` (``relative/path label`` lines) in root."""
    lines = {"train": [], "val": [], "test": []}
    k = 0
    for label, (synset, n) in enumerate(zip(SYNSETS, train_counts)):
        for i in range(n):
            rel = f"train/{synset}/{synset}_{190 + i}.JPEG"
            _image(root / rel, 10 * label + i)
            lines["train"].append(f"{rel} {label}")
        for split, count in (("val", 1), ("test", 2)):
            for _ in range(count):
                k += 1
                rel = f"val/{synset}/ILSVRC2012_val_{k:08d}.JPEG"
                _image(root / rel, 100 + k)
                lines[split].append(f"{rel} {label}")
    for split, text in lines.items():
        if split != "val" or val:
            (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(text) + "\n")
    return root


def _load(root, **kw):
    kw.setdefault("val_list", "ImageNet_LT_val.txt")
    if kw["val_list"] is None:
        del kw["val_list"]
    return load_source("image-list", root=root, train_list="ImageNet_LT_train.txt", test_list="ImageNet_LT_test.txt",
                       **kw)


def test_imagenet_lt_lists_name_classes_by_synset(tmp_path):
    splits = _load(_imagenet_lt(tmp_path))
    assert splits.schema.groups[0].classes == tuple(SYNSETS)
    assert splits.train.class_counts().tolist() == TRAIN_COUNTS
    assert (len(splits.val), len(splits.test)) == (4, 8)
    assert splits.train.pixels is None and splits.train.paths[0] == tmp_path / "train/n01440764/n01440764_190.JPEG"
    assert splits.train.ids[0] == "train/n01440764/n01440764_190.JPEG"
    assert splits.test.labels[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert splits.train.image(0).size == (8, 8)


@pytest.mark.parametrize("form", ["plain", "indexed"])
def test_class_names_file_and_repeated_names_made_unique(tmp_path, caplog, form):
    root = _imagenet_lt(tmp_path)
    if form == "plain":
        text = "\n".join(NAMES) + "\n"
    else:  # "index name" lines, in any order
        text = "".join(f"{i} {NAMES[i]}\n" for i in (2, 0, 3, 1))
    (root / "classnames.txt").write_text(text)
    with caplog.at_level(logging.WARNING):
        splits = _load(root, class_names="classnames.txt")
    assert splits.schema.groups[0].classes == ("tench", "crane (1)", "crane (2)", "goldfish")
    assert "'crane' → 'crane (1)'" in caplog.text and "'crane' → 'crane (2)'" in caplog.text


def test_places_lt_flat_test_folder_names_classes_from_training_folders(tmp_path):
    """Places-LT lists: ``data_256/<letter>/<scene>/…jpg`` for train, a flat ``val_256/`` for test."""
    scenes = [("a", "airfield"), ("b", "bedroom"), ("c", "canyon")]
    train, test = [], []
    for label, (letter, scene) in enumerate(scenes):
        for i in range(4 - label):
            rel = f"data_256/{letter}/{scene}/{i + 1:08d}.jpg"
            _image(tmp_path / rel, 20 * label + i)
            train.append(f"{rel} {label}")
        rel = f"val_256/Places365_val_{label + 1:08d}.jpg"
        _image(tmp_path / rel, 200 + label)
        test.append(f"{rel} {label}")
    (tmp_path / "Places_LT_train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "Places_LT_test.txt").write_text("\n".join(test) + "\n")
    splits = load_source("image-list", root=tmp_path, train_list="Places_LT_train.txt", test_list="Places_LT_test.txt",
                         val_per_class=1)
    assert splits.schema.groups[0].classes == ("airfield", "bedroom", "canyon")
    assert splits.train.class_counts().tolist() == [3, 2, 1] and splits.val.class_counts().tolist() == [1, 1, 1]


def test_without_class_names_or_common_folder_classes_are_numbered(tmp_path):
    for i in range(6):
        _image(tmp_path / f"{i}.png", i, "PNG")
    (tmp_path / "train.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in range(4)))
    (tmp_path / "test.txt").write_text("4.png 0\n5.png 1\n")
    splits = load_source("image-list", root=tmp_path, train_list="train.txt", test_list=tmp_path / "test.txt",
                         val_per_class=0)
    assert splits.schema.groups[0].classes == ("class_0", "class_1") and len(splits.val) == 0


@pytest.mark.parametrize("classes, names", [
    (["goldfish", "tench"], ("goldfish", "tench")),
    ([3, 0], ("goldfish", "tench")),
    (["crane (2)", 0], ("crane (2)", "tench")),
])
def test_class_subset_by_name_or_index_reindexed_in_given_order(tmp_path, classes, names):
    root = _imagenet_lt(tmp_path)
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    splits = _load(root, class_names="classnames.txt", classes=classes)
    assert splits.schema.groups[0].classes == names
    counts = {"goldfish": 3, "tench": 6, "crane (2)": 4}
    assert splits.train.class_counts().tolist() == [counts[n] for n in names]
    assert len(splits.test) == 4 and all(p.parent.name in {"n01443537", "n01440764", "n03126707"}
                                         for p in splits.train.paths)


@pytest.mark.parametrize("classes, message", [
    (["goldfsh", "tench"], r"unknown class 'goldfsh'; did you mean 'goldfish'\?"),
    (["crane", "tench"], r"names 'crane', which 2 classes share; write the one you mean: crane \(1\), crane \(2\)"),
    ([0, 7], r"index 7 is out of range; the classes are 0\.\.3"),
    (["tench", 0], r"lists class\(es\) \['tench'\] more than once"),
])
def test_bad_class_subset_is_named(tmp_path, classes, message):
    root = _imagenet_lt(tmp_path)
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    with pytest.raises(DataError, match=r"ImageNet_LT_train\.txt: data\.classes .*" + message):
        _load(root, class_names="classnames.txt", classes=classes)


def test_without_val_list_validation_is_carved_class_balanced(tmp_path):
    root = _imagenet_lt(tmp_path, val=False)
    a = _load(root, val_list=None, val_per_class=2, split_seed=3)
    assert a.val.class_counts().tolist() == [2, 2, 2, 2]
    assert a.train.class_counts().tolist() == [n - 2 for n in TRAIN_COUNTS]
    assert not set(a.val.ids) & set(a.train.ids)
    assert a.val.ids == _load(root, val_list=None, val_per_class=2, split_seed=3).val.ids
    with pytest.raises(DataError, match=r"3 val image\(s\) per class.*too few.*'n01443537': 3.*data\.val_list"):
        _load(root, val_list=None, val_per_class=3)


@pytest.mark.parametrize("line, message", [
    ("train/n01440764/n01440764_190.JPEG", r"line 1: expected 'relative/path label'"),
    ("train/n01440764/n01440764_190.JPEG zero", r"line 1: label 'zero' is not an integer class index"),
    ("train/n01440764/n01440764_190.JPEG 4", r"line 1: label 4 is out of range: .*classnames\.txt names 4 classes"),
    ("train/n01440764/gone.JPEG 0", r"gone\.JPEG \(ImageNet_LT_train\.txt line 1\): file not found"),
])
def test_bad_list_line_is_named_with_file_and_line(tmp_path, line, message):
    root = _imagenet_lt(tmp_path)
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    path = root / "ImageNet_LT_train.txt"
    path.write_text(line + "\n" + "\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match=message):
        _load(root, class_names="classnames.txt")


def test_label_typo_without_class_names_is_named_with_its_line(tmp_path):
    root = _imagenet_lt(tmp_path)
    lines = (root / "ImageNet_LT_test.txt").read_text().splitlines()
    lines[4] = lines[4].replace(" 2", " 20")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ImageNet_LT_test\.txt line 5: label 20 makes classes 0\.\.20, but 17 of them "
                                        r"have no training image \(4, 5, 6"):
        _load(root)


def test_bad_class_names_file_is_named(tmp_path):
    root = _imagenet_lt(tmp_path)
    (root / "classnames.txt").write_text("0 tench\n1 crane\n3 goldfish\n2 crane\n0 carp\n")
    with pytest.raises(DataError, match=r"classnames\.txt line 5: index 0 is named twice \(also on line 1\)"):
        _load(root, class_names="classnames.txt")
    (root / "classnames.txt").write_text("tench\n\ncrane\ngoldfish\n")
    with pytest.raises(DataError, match=r"classnames\.txt line 2: blank line"):
        _load(root, class_names="classnames.txt")


# ------------------------------------------------------------------------------------------ iNaturalist
def _inat(root, *, test_annotations=False):
    """train2018.json / val2018.json / test2018.json (COCO-style; the test file has no annotations) over
    root/train_val2018/<kingdom>/<category id>/<hash>.jpg; category ids are not 0..C-1 and two names repeat."""
    cats = [{"id": 40, "name": "Aves", "supercategory": "Animalia"}, {"id": 7, "name": "Poa annua"},
            {"id": 12, "name": "Aves"}]
    counts = {40: 5, 7: 4, 12: 3}
    docs, image_id = {}, 0
    for split, per in (("train", None), ("val", 2), ("test", 1)):
        images, annotations = [], []
        for c in cats:
            for i in range(per or counts[c["id"]]):
                image_id += 1
                rel = f"{'test2018' if split == 'test' else 'train_val2018'}/Plantae/{c['id']}/{image_id:032x}.jpg"
                _image(root / rel, image_id)
                images.append({"id": image_id, "file_name": rel, "width": 8, "height": 8, "license": 1})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": c["id"]})
        doc = {"info": {"year": 2018}, "images": images, "categories": cats if split != "test" else []}
        if split != "test" or test_annotations:
            doc["annotations"] = annotations
        docs[split] = doc
        (root / f"{split}2018.json").write_text(json.dumps(doc))
    return root


def _inat_load(root, **kw):
    return load_source("inaturalist", root=root, train_json="train2018.json", val_json="val2018.json", **kw)


def test_inaturalist_json_labels_by_sorted_category_id_and_val_as_test(tmp_path, caplog):
    root = _inat(tmp_path)
    with caplog.at_level(logging.INFO):
        splits = _inat_load(root, test_json="test2018.json")
    assert splits.schema.groups[0].classes == ("Poa annua", "Aves (1)", "Aves (2)")  # ids 7, 12, 40
    assert splits.test.class_counts().tolist() == [2, 2, 2]  # val2018.json is the test split
    assert splits.val.class_counts().tolist() == [1, 1, 1]  # carved from train
    assert splits.train.class_counts().tolist() == [3, 2, 4]
    assert "test2018.json has no annotations" in caplog.text and "testing on the validation file" in caplog.text
    assert splits.train.paths[0].is_file()


def test_inaturalist_labelled_test_and_class_subset(tmp_path):
    root = _inat(tmp_path, test_annotations=True)
    splits = _inat_load(root, test_json="test2018.json", classes=["Aves (2)", 0])  # 0: the dense index of category id 7
    assert splits.schema.groups[0].classes == ("Aves (2)", "Poa annua")
    assert splits.val.class_counts().tolist() == [2, 2] and splits.test.class_counts().tolist() == [1, 1]


def test_inaturalist_bad_json_is_named(tmp_path):
    root = _inat(tmp_path)
    with pytest.raises(DataError, match=r"test2018\.json has no 'annotations'.*cannot be the val split"):
        load_source("inaturalist", root=root, train_json="train2018.json", val_json="test2018.json")
    doc = json.loads((root / "val2018.json").read_text())
    doc["annotations"][1]["category_id"] = 99
    (root / "val2018.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"val2018\.json annotations\[1\]: category_id 99 is not a category"):
        _inat_load(root)
    (root / "val2018.json").write_text('{"images": [}')
    with pytest.raises(DataError, match=r"val2018\.json line 1, column 13: not valid JSON"):
        _inat_load(root)


# ------------------------------------------------------------------------------------------ the CLI
def _stats(tmp_path, data, capsys):
    from noise_generator import NoiseGenerator  # noqa: F401  (registers "test-noise")
    from synthaug.cli import main

    config = {"name": "lists", "output_dir": str(tmp_path / "runs"), "progress": False, "data": data,
              "generator": {"name": "test-noise", "params": {"size": 8}}}
    path = tmp_path / "lists.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["stats", str(path)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_stats_command_on_an_image_list(tmp_path, capsys):
    root = _imagenet_lt(tmp_path / "imagenet_lt")
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    out = _stats(tmp_path, {"source": "image-list", "root": str(root), "train_list": "ImageNet_LT_train.txt",
                            "val_list": "ImageNet_LT_val.txt", "test_list": "ImageNet_LT_test.txt",
                            "class_names": "classnames.txt"}, capsys)
    assert "crane (2)" in out and (tmp_path / "runs/lists/data/splits.json").is_file()


def test_stats_command_on_inaturalist(tmp_path, capsys):
    root = _inat(tmp_path / "inat")
    out = _stats(tmp_path, {"source": "inaturalist", "root": str(root), "train_json": "train2018.json",
                            "val_json": "val2018.json", "test_json": "test2018.json"}, capsys)
    assert "Poa annua" in out
