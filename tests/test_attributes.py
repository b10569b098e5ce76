"""Multi-attribute data: the DeepFashion attribute layout and a 6-column manifest, their bad inputs, class
statistics for 26 classes, rare-attribute plans, and a whole multi-attribute experiment run."""

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

import shapes
from noise_generator import NoiseGenerator  # noqa: F401  (registers "test-noise")
from synthaug.data import ClassStats, DataError, LabelSchema, ShotThresholds, load_source
from synthaug.data.attributes import read_class_names
from synthaug.plan import rare_attribute_items, rare_classes


@pytest.fixture(scope="module")
def splits():
    return {"train": shapes.make_split(400, 0, long_tailed=True),
            "val": shapes.make_split(40, 1, long_tailed=False),
            "test": shapes.make_split(80, 2, long_tailed=False)}


@pytest.fixture(scope="module")
def layout(tmp_path_factory, splits):
    return shapes.write_attribute_layout(tmp_path_factory.mktemp("deepfashion"), splits)


def test_attribute_layout_loads_groups_labels_and_splits(layout, splits):
    d = load_source("deepfashion-attributes", root=layout)
    assert [g.name for g in d.schema.groups] == list(shapes.GROUPS)
    assert d.schema.group_sizes == [7, 3, 3, 4, 6, 3] and d.schema.num_outputs == 26
    for name in ("train", "val", "test"):
        part = getattr(d, name)
        assert (part.labels == splits[name][1]).all()
        assert part.ids[0] == f"img/{name}/0000.png"
    assert np.asarray(d.train.image(5)).tolist() == splits["train"][0][5].tolist()
    assert d.schema.names(d.train.labels[0])["texture"] in shapes.GROUPS["texture"]


def test_attribute_layout_class_names_from_config_or_inferred(layout, tmp_path):
    declared = {f"g{i}": [f"c{j}" for j in range(n)] for i, n in enumerate(shapes.SIZES)}
    assert load_source("deepfashion-attributes", root=layout, classes=declared).schema.to_dict() == declared
    bare = tmp_path / "bare"
    shutil.copytree(layout, bare)
    (bare / "split" / "classes.yaml").unlink()
    schema = load_source("deepfashion-attributes", root=bare).schema
    assert [g.name for g in schema.groups] == [f"attr{i}" for i in range(1, 7)]
    assert schema.group_sizes == [7, 3, 3, 4, 6, 3] and schema.groups[0].classes[:2] == ("0", "1")


def test_class_names_file_accepts_lists_and_strings(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("pattern: floral graphic\nsleeve_length: [long_sleeve, sleeveless]\n")
    assert read_class_names(path) == {"pattern": ["floral", "graphic"],
                                      "sleeve_length": ["long_sleeve", "sleeveless"]}
    path.write_text("- not a mapping\n")
    with pytest.raises(DataError, match="expected a mapping"):
        read_class_names(path)


def _edit_line(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("file, lineno, text, message", [
    ("train_attr.txt", 3, "1 0 2 1 0", (r"train_attr\.txt line 3: expected 6 integers \(one per group: colour, "
                                        r"shape, size, background, texture, noise\), got 5")),
    ("val_attr.txt", 2, "7 0 0 0 0 0", r"val_attr\.txt line 2: value 7 for group 'colour' is out of range \(0\.\.6\)"),
    ("test_attr.txt", 4, "0 0 0 -1 0 0", r"test_attr\.txt line 4: value -1 for group 'background' is out of range"),
    ("train_attr.txt", 1, "0 0 x 0 0 0", r"train_attr\.txt line 1: expected whitespace-separated integers"),
    ("train.txt", 4, "img/train/missing.png", r"missing\.png \(train\.txt line 4\): file not found"),
])
def test_bad_attribute_input_names_file_and_line(layout, tmp_path, file, lineno, text, message):
    root = tmp_path / "bad"
    shutil.copytree(layout, root)
    _edit_line(root / "split" / file, lineno, text)
    with pytest.raises(DataError, match=message):
        load_source("deepfashion-attributes", root=root)


def test_bad_attribute_layout_files(layout, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(layout, root)
    with open(root / "split" / "test_attr.txt", "a") as f:
        f.write("0 0 0 0 0 0\n")
    with pytest.raises(DataError, match=r"test\.txt lists 80 images but .*test_attr\.txt has 81"):
        load_source("deepfashion-attributes", root=root)
    (root / "split" / "test_attr.txt").unlink()
    with pytest.raises(DataError, match=r"test_attr\.txt not found"):
        load_source("deepfashion-attributes", root=root)
    with pytest.raises(DataError, match="needs data.root"):
        load_source("deepfashion-attributes")


def test_six_column_manifest_with_split_column(tmp_path, splits):
    path = shapes.write_manifest(tmp_path, splits)
    d = load_source("manifest", manifest=path, label_columns=list(shapes.GROUPS), classes=shapes.GROUPS)
    assert d.schema.group_sizes == [7, 3, 3, 4, 6, 3]
    assert (d.train.labels == splits["train"][1]).all() and (d.test.labels == splits["test"][1]).all()
    assert len(d.val) == 40
    inferred = load_source("manifest", manifest=path, label_columns=list(shapes.GROUPS))
    assert inferred.schema.groups[1].classes == ("circle", "tall_oval", "wide_oval")  # sorted names
    lines = path.read_text().splitlines()
    lines[5] = re.sub(r",(wide_oval|circle|tall_oval),", ",hexagon,", lines[5])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv line 6: unknown label 'hexagon' in column 'shape'"):
        load_source("manifest", manifest=path, label_columns=list(shapes.GROUPS), classes=shapes.GROUPS)


def test_stats_and_bar_chart_for_26_classes(splits, tmp_path):
    schema = LabelSchema.from_dict(shapes.GROUPS)
    stats = ClassStats.from_labels(schema, splits["train"][1], ShotThresholds(many=100, few=20))
    d = stats.to_dict()
    assert [g["group"] for g in d["groups"]] == list(shapes.GROUPS)
    colour = d["groups"][0]
    assert list(colour["counts"].values()) == [165, 95, 66, 33, 22, 12, 7]  # long-tailed, seeded
    assert colour["shot_groups"] == {"many": ["red"], "medium": ["green", "blue", "yellow", "magenta"],
                                     "few": ["cyan", "white"]}
    assert colour["imbalance_ratio"] == 165 / 7
    assert stats.format().count("\n") == 26 + 6 - 1
    png = stats.bar_chart(tmp_path / "counts.png")
    w, h = Image.open(png).size
    assert w > 2000 and h > 400  # six panels side by side, one bar per class


def test_rare_attribute_plan_copies_label_vectors_and_captions(splits):
    schema = LabelSchema.from_dict(shapes.GROUPS)
    labels = splits["train"][1]
    ids = [f"img/train/{i:04d}.png" for i in range(len(labels))]
    thresholds = ShotThresholds(many=100, few=20)
    rare = rare_classes(schema, labels, thresholds, ["few"])
    has_rare = np.array([any(rare[g][v[g]] for g in range(6)) for v in labels])
    items = rare_attribute_items(schema, labels, ids, seed=3, thresholds=thresholds, per_source=2)
    assert len(items) == 2 * has_rare.sum() and len({it.item_id for it in items}) == len(items)
    by_id = dict(zip(ids, labels))
    for it in items:
        assert it.labels == tuple(by_id[it.source_ids[0]]) and has_rare[ids.index(it.source_ids[0])]
        assert re.fullmatch(r"[A-Za-z0-9_-]+", it.item_id)
    first = items[0]
    words = [shapes.GROUPS[g][c].replace("_", " ") for g, c in zip(shapes.GROUPS, first.labels)]
    assert first.prompt == "A person wearing " + " ".join(words) + " clothes"
    counts = [np.bincount(labels[:, g], minlength=n) for g, n in enumerate(shapes.SIZES)]
    rarest = min(counts[g][c] for g in range(6) for c in np.flatnonzero(rare[g]))
    assert min(counts[g][first.labels[g]] for g in range(6)) == rarest  # rarest sources come first

    small = rare_attribute_items(schema, labels, ids, seed=3, thresholds=thresholds, total=10)
    grown = rare_attribute_items(schema, labels, ids, seed=3, thresholds=thresholds, total=500)
    assert len(small) == 10 and grown[:10] == small  # growing the plan keeps items, labels and seeds
    assert len(grown) == 500 and grown[has_rare.sum()].item_id.endswith("-001")
    custom = rare_attribute_items(schema, labels, ids, seed=3, thresholds=thresholds, total=1,
                                  template="a {shape} in {colour}")
    assert re.fullmatch(r"a (wide oval|circle|tall oval) in \w+", custom[0].prompt)
    with pytest.raises(ValueError, match="exactly one of plan.per_source and plan.total"):
        rare_attribute_items(schema, labels, ids, seed=3, per_source=1, total=5)
    with pytest.raises(ValueError, match="No training image has a rare attribute class"):
        rare_attribute_items(schema, labels, ids, seed=3, thresholds=ShotThresholds(many=1, few=1), total=5)
    with pytest.raises(ValueError, match=r"uses field \{class\}"):
        rare_attribute_items(schema, labels, ids, seed=3, thresholds=thresholds, total=5, template="a {class}")


@pytest.mark.slow
def test_multi_attribute_experiment_runs_every_stage(tmp_path, splits, capsys):
    from synthaug.cli import main

    manifest = shapes.write_manifest(tmp_path / "data", splits)
    config = {
        "name": "shapes", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"source": "manifest", "manifest": str(manifest), "label_columns": list(shapes.GROUPS),
                 "classes": shapes.GROUPS, "shots": {"many": 100, "few": 20}},
        "generator": {"name": "test-noise", "params": {"size": 32}},
        "plan": {"strategy": "rare-attributes", "total": 60, "batch_size": 30},
        "judge": {"enabled": False},
        "evaluation": {"enabled": False},  # the studies are tested in test_report.py
        "train": {"epochs": 1, "batch_size": 64, "loss": "weighted-ce", "weight_k": 250 / 11},
        "arms": [{"name": "real", "train": {"augment": "hard"}},
                 {"name": "synth-rsp", "synthetic": "generated",
                  "train": {"augment": "synthetic", "mixing": "rsp", "synthetic_share": 0.5}}],
    }
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "shapes"
    records = [json.loads(line) for line in (run / "synthetic" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 60 and all(r["text"].startswith("A person wearing ") for r in records)
    train_ids = {r["image"]: r for r in
                 (dict(zip(["image", *shapes.GROUPS, "split"], line.split(",")))
                  for line in manifest.read_text().splitlines()[1:])}
    for r in records:
        source = train_ids[r["source_ids"][0]]
        assert r["labels"] == {g: source[g] for g in shapes.GROUPS}
    for arm in ("real", "synth-rsp"):
        metrics = json.loads((run / "train" / arm / "seed0" / "metrics.json").read_text())
        assert list(metrics["groups"]) == list(shapes.GROUPS) and metrics["loss"] > 0
        assert set(metrics["groups"]["colour"]["shots"]) == {"many", "medium", "few"}
    done = json.loads((run / "train" / "synth-rsp" / "seed0" / "done.json").read_text())
    assert done["synthetic"] == 60
    assert "| synth-rsp |" in capsys.readouterr().out
