"""``hf-dataset``: Hugging Face ``datasets`` data written by ``save_to_disk`` or as parquet files, built in each
test with ``datasets`` itself (ClassLabel + Image features, the Hub's layout); nothing is downloaded."""

import io
import pickle

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from synthaug.data import DataError, load_source

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value  # noqa: E402

NAMES = ["cat", "dog", "owl"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """load_dataset("parquet") prepares an Arrow copy in the datasets cache: keep it in the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _split(counts, *, label=ClassLabel(names=NAMES), values=None, start=0):
    """A split with ``counts[c]`` 8×8 RGB PNG images of class c (an Image feature, stored as bytes)."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = [PILImage.fromarray(np.full((8, 8, 3), start + i, np.uint8)) for i in range(len(labels))]
    return Dataset.from_dict({"image": images, "label": values(labels) if values else labels},
                             features=Features({"image": Image(), "label": label}))


def test_save_to_disk_classlabel_names_and_split_mapping(tmp_path):
    DatasetDict(train=_split([6, 4, 3]), validation=_split([1, 1, 1], start=50),
                test=_split([2, 2, 2], start=90)).save_to_disk(tmp_path / "ds")
    splits = load_source("hf-dataset", root=tmp_path / "ds")
    assert splits.schema.groups[0].classes == tuple(NAMES)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [13, 3, 6]
    assert splits.train.class_counts().tolist() == [6, 4, 3] and splits.test.ids[0] == "test/0"
    # stored images stay in the Arrow table, decoded on demand (here: the value each was made with)
    assert splits.train.paths is None and splits.train.pixels.dtype == object
    assert np.asarray(splits.val.image(2))[0, 0].tolist() == [52, 52, 52]
    again = pickle.loads(pickle.dumps(splits.test))  # as loader workers receive it
    assert np.asarray(again.image(5))[0, 0, 0] == 95


def test_missing_splits_are_carved_class_balanced(tmp_path):
    DatasetDict(train=_split([6, 5, 4]), val=_split([1, 1, 1], start=50)).save_to_disk(tmp_path / "ds")
    splits = load_source("hf-dataset", root=tmp_path / "ds", test_per_class=2, split_seed=1)
    assert splits.test.class_counts().tolist() == [2, 2, 2] and splits.val.class_counts().tolist() == [1, 1, 1]
    assert splits.train.class_counts().tolist() == [4, 3, 2]
    _split([4, 3, 3]).save_to_disk(tmp_path / "one")  # one Dataset: train, test and val carved
    splits = load_source("hf-dataset", root=tmp_path / "one", test_per_class=1, val_per_class=1)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [4, 3, 3]
    with pytest.raises(DataError, match=r"1 test \+ 3 val image\(s\) per class.*'dog': 3.*'validation' split"):
        load_source("hf-dataset", root=tmp_path / "one", test_per_class=1, val_per_class=3)


def test_unlabelled_test_split_is_carved_instead(tmp_path):
    test = Dataset.from_dict({"image": [PILImage.new("RGB", (8, 8))] * 3, "label": [-1, -1, -1]},
                             features=Features({"image": Image(), "label": ClassLabel(names=NAMES)}))
    DatasetDict(train=_split([5, 5, 5]), test=test).save_to_disk(tmp_path / "ds")
    splits = load_source("hf-dataset", root=tmp_path / "ds", test_per_class=2, val_per_class=1)
    assert splits.test.class_counts().tolist() == [2, 2, 2] and all(i.startswith("train/") for i in splits.test.ids)


def test_parquet_files_split_by_name_with_integer_or_string_labels(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _split([4, 3, 3], label=Value("int64")).to_parquet(str(data / "train-00000-of-00001.parquet"))
    _split([1, 1, 1], label=Value("int64"), start=70).to_parquet(str(data / "test-00000-of-00001.parquet"))
    splits = load_source("hf-dataset", root=tmp_path, val_per_class=1)
    assert splits.schema.groups[0].classes == ("class_0", "class_1", "class_2")
    assert [len(splits.train), len(splits.val), len(splits.test)] == [7, 3, 3]
    assert np.asarray(splits.test.image(0))[0, 0, 0] == 70

    words = _split([3, 3, 3], label=Value("string"), values=lambda ls: [["owl", "cat", "emu"][c] for c in ls])
    words.to_parquet(str(tmp_path / "words.parquet"))
    splits = load_source("hf-dataset", root=tmp_path / "words.parquet", test_per_class=1, val_per_class=1)
    assert splits.schema.groups[0].classes == ("cat", "emu", "owl") and splits.train.class_counts().tolist() == [1] * 3


def test_image_column_of_file_paths_is_read_as_files(tmp_path):
    root = tmp_path / "ds"
    for i in range(9):
        (root / "images").mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((8, 8), i, np.uint8)).save(root / "images" / f"{i}.png")
    ds = Dataset.from_dict({"file": [f"images/{i}.png" for i in range(9)], "y": [i % 3 for i in range(9)]},
                           features=Features({"file": Value("string"), "y": ClassLabel(names=NAMES)}))
    ds.save_to_disk(root)
    splits = load_source("hf-dataset", root=root, image_column="file", label_columns=["y"], test_per_class=1,
                         val_per_class=1)
    assert splits.train.pixels is None and all(p.parent == root / "images" for p in splits.test.paths)
    (root / "images" / "4.png").unlink()
    with pytest.raises(DataError, match=r"4\.png \(split 'train' row 4\): file not found"):
        load_source("hf-dataset", root=root, image_column="file", label_columns=["y"])


def test_missing_column_is_named_with_the_columns(tmp_path):
    _split([3, 3, 3]).save_to_disk(tmp_path / "ds")
    (tmp_path / "hf-cache").mkdir()
    with pytest.raises(DataError, match=r"split 'train' has no column 'fine_label' \(data\.label_columns\); its "
                                        r"columns are \['image', 'label'\]"):
        load_source("hf-dataset", root=tmp_path / "ds", label_columns=["fine_label"])
    with pytest.raises(DataError, match=r"no save_to_disk dataset .* and no \.parquet or \.arrow files"):
        load_source("hf-dataset", root=tmp_path / "hf-cache")  # an empty folder


def test_corrupt_stored_image_is_named_or_skipped(tmp_path):
    ds = _split([4, 4, 4]).cast_column("image", Image(decode=False))
    rows = ds.to_list()
    rows[5]["image"] = {"bytes": b"not a png", "path": None}
    bad = Dataset.from_list(rows, features=ds.features).cast_column("image", Image())
    bad.save_to_disk(tmp_path / "ds")
    with pytest.raises(DataError, match=r"split 'train' row 5: unreadable or corrupt image"):
        load_source("hf-dataset", root=tmp_path / "ds", test_per_class=1, val_per_class=1)
    splits = load_source("hf-dataset", root=tmp_path / "ds", test_per_class=1, val_per_class=1, on_bad_image="skip")
    assert len(splits.train.skipped) == 1 and "train/5" not in splits.train.ids + splits.val.ids + splits.test.ids


def test_stats_command_on_a_saved_dataset(tmp_path, capsys):
    from noise_generator import NoiseGenerator  # noqa: F401  (registers "test-noise")
    from synthaug.cli import main

    DatasetDict(train=_split([6, 4, 3]), test=_split([2, 2, 2], start=90)).save_to_disk(tmp_path / "ds")
    config = {"name": "hf", "output_dir": str(tmp_path / "runs"), "progress": False,
              "data": {"source": "hf-dataset", "root": str(tmp_path / "ds"), "val_per_class": 1},
              "generator": {"name": "test-noise", "params": {"size": 8}}}
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["stats", str(path)]) == 0, capsys.readouterr().err
    assert "owl" in capsys.readouterr().out
    assert main(["stats", str(path)]) == 0  # read back from data/splits.json, images not checked again
