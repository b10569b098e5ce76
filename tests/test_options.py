"""No setting is silently ignored: data-source options, declared classes, skipped images, captions from a
manifest, model summaries without data, safe file names, and internal errors shown as errors."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from synthaug.cli import main
from synthaug.config import ConfigError, build_config
from synthaug.data import load_source
from synthaug.data.schema import LabelSchema
import synthaug.runner.data as data_stage_module
from synthaug.plan import PlanItem
from synthaug.store import SyntheticStore


@pytest.mark.parametrize("data", [
    {"source": "mnist5k", "mode": "L"},
    {"source": "digits", "on_bad_image": "skip"},
    {"source": "imagefolder", "root": "x", "classes_file": "classes.yaml"},
    {"source": "deepfashion-attributes", "root": "x", "test_per_class": 5},
])
def test_an_option_the_source_does_not_read_is_an_error(data):
    field = next(k for k in data if k not in ("source", "root"))
    with pytest.raises(ConfigError, match=f"does not use data.{field}"):
        build_config({"data": data})


def test_source_loaders_take_no_unknown_options():
    with pytest.raises(ValueError, match="does not read"):
        load_source("digits", mode="RGB")


def test_imagefolder_classes_given_as_a_mapping(image_tree):
    root = image_tree()
    d = load_source("imagefolder", root=root, classes={"animal": ["owl", "dog", "cat"]},
                    test_per_class=2, val_per_class=1)
    assert d.schema.to_dict() == {"animal": ["owl", "dog", "cat"]}
    assert d.train.class_counts().tolist() == [3, 5, 9]


def test_skipped_images_survive_long_tail_subsampling(image_tree, tmp_path, capsys):
    root = image_tree()
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    config = {"name": "skips", "output_dir": str(tmp_path / "runs"), "progress": False,
              "data": {"source": "imagefolder", "root": str(root), "on_bad_image": "skip",
                       "test_per_class": 2, "val_per_class": 1, "longtail": {"imbalance_ratio": 3}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Skipped 1 bad image(s)" in out and "broken.png" in out
    done = json.loads((tmp_path / "runs" / "skips" / "data" / "done.json").read_text())
    assert len(done["skipped"]) == 1


def test_manifest_caption_column_gives_per_image_captions(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    rows = []
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(img / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "label": "ab"[i % 2], "caption": f"a photo, variant {i}",
                     "split": "train" if i < 6 else "test"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_source("manifest", manifest=path, caption_column="caption")
    assert d.train.captions == [f"a photo, variant {i}" for i in range(6)]
    assert d.train.subset([1, 0]).captions == ["a photo, variant 1", "a photo, variant 0"]


def test_model_summary_from_declared_classes_without_data(tmp_path, capsys):
    config = {"name": "df", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "deepfashion-attributes", "root": str(tmp_path / "absent"),
                       "classes": {"pattern": ["floral", "solid"], "fit": ["tight", "loose", "conventional"]}},
              "train": {"model": {"name": "small-cnn"}}, "arms": [{"name": "real-ce"}]}
    path = tmp_path / "df.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["model-summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "real-ce: small-cnn" in out and "outputs [2, 3]" in out and "trainable" in out


def test_class_names_never_become_paths(tmp_path):
    schema = LabelSchema.single(["a/b", "../up", "ünï code"])
    store = SyntheticStore(tmp_path / "set", schema)
    image = Image.new("L", (4, 4))
    for c, name in enumerate(schema.groups[0].classes):
        store.write(PlanItem(f"{name}-00000", (c,), 1), image)
    store.flush()
    files = sorted(p.name for p in (tmp_path / "set" / "images").rglob("*") if p.is_file())
    assert len(files) == 3 and all("/" not in f and not f.startswith(".") for f in files)
    assert not (tmp_path / "up-00000.png").exists() and not (tmp_path / "set" / "images" / "a").exists()
    assert (tmp_path / "set" / "images" / "ünï_code-00000.png").is_file() or any("ünï" in f for f in files)
    assert len(store.load(mode="L")) == 3


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    assert main(["stats", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: Config file")

    def broken(ctx):
        raise TypeError("an internal bug")

    monkeypatch.setattr(data_stage_module, "data_stage", broken)
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "digits"}, "output_dir": str(tmp_path)}))
    with pytest.raises(TypeError, match="an internal bug"):
        main(["stats", str(config)])


def test_model_summary_counts_without_reading_the_backbone_weights(tmp_path, capsys):
    """Parameter counts need no weights: a `train.model.weights` file that is not there yet is not read."""
    config = {"name": "w", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "deepfashion-attributes", "root": str(tmp_path / "absent"),
                       "classes": {"pattern": ["floral", "solid"]}},
              "train": {"model": {"name": "resnet18", "weights": str(tmp_path / "later" / "resnet18.safetensors")}},
              "arms": [{"name": "real-ce"}]}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["model-summary", str(path)]) == 0
    assert "real-ce: resnet18" in capsys.readouterr().out
