"""The shipped reference configs (issue 23), each run as a user runs it: `synthaug stats` through the CLI on
fabricated data in the benchmark's official format (CIFAR archives, ImageNet-LT / Places-LT split lists with
tiny JPEGs, a Caltech-101 class folder), the generation plan it makes, and, where the data allows, a one-step
`synthaug run` with tiny random-weight models. `--set` changes only what the tiny data forces: data.root, model
sizes, hub ids (-> tiny local folders), counts and epochs; everything else is the file as shipped."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "generators"))  # the tiny DiT builder lives beside its tests

from test_cifar import CIFAR10_NAMES, FINE_NAMES, COARSE_NAMES, _records, py2_dumps, write_archive  # noqa: E402
from test_class_map import build_tiny_dit_pipeline  # noqa: E402
from test_image_lists import SYNSETS, TRAIN_COUNTS, _imagenet_lt  # noqa: E402
from tiny_unclip import build_tiny_unclip_pipeline  # noqa: E402

from synthaug.cli import main  # noqa: E402
from synthaug.config import load_config  # noqa: E402
from synthaug.data.longtail import cao2019_counts, cao2019_indices, training_subset_sha256  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PER_CLASS = 100  # CIFAR fixture: 100 training images per class, the smallest size where ρ = 100 keeps 1 tail image
TEST_PER_CLASS = 5
SHOT_LINE = re.compile(r"^\s+(\S.*?)\s+(\d+)\s+(many|medium|few)$")
TINY_DDPM = ["generator.params.block_out_channels=[8, 16]", "generator.params.layers_per_block=1",
             "generator.params.norm_num_groups=4", "generator.params.attention=false", "generator.params.train_steps=1",
             "generator.params.batch_size=8", "generator.params.warmup_steps=0", "generator.params.sampling_steps=1",
             "generator.params.precision=fp32"]
TINY_CLASSIFIER = ["train.model.name=small-cnn", "train.epochs=1", "train.num_workers=0", "judge.epochs=1",
                   "seeds=[0]", "progress=false"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """data.root holding cifar-10-python.tar.gz as downloaded (protocol-2 pickles, bytes keys), 100 per class;
    returns (root, training labels in data_batch_1..5 order)."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), PER_CLASS))
    pixels = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    n = len(labels) // 5
    files = {f"data_batch_{i + 1}": py2_dumps({b"batch_label": b"training batch %d of 5" % (i + 1),
                                               b"labels": labels[i * n:(i + 1) * n].tolist(),
                                               b"data": pixels[i * n:(i + 1) * n],
                                               b"filenames": [b"img_%d.png" % k for k in range(n)]})
             for i in range(5)}
    test_labels = np.repeat(np.arange(10), TEST_PER_CLASS)
    files["test_batch"] = py2_dumps({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
                                     b"data": pixels[:len(test_labels)], b"filenames": [b"t.png"] * len(test_labels)})
    files["batches.meta"] = py2_dumps({b"num_cases_per_batch": n, b"num_vis": 3072,
                                       b"label_names": [c.encode() for c in CIFAR10_NAMES]})
    root = tmp_path_factory.mktemp("cifar10")
    write_archive(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    return root, labels


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    """data.root holding cifar-100-binary.tar.gz (2 label bytes, coarse then fine, + 3,072 pixel bytes), 100 per
    fine class; returns (root, fine training labels)."""
    rng = np.random.default_rng(1)
    fine = rng.permutation(np.repeat(np.arange(100), PER_CLASS))
    test = np.arange(100)
    pixels = np.zeros((len(fine), 3072), np.uint8)
    files = {"train.bin": _records(pixels, [fine // 5, fine]), "test.bin": _records(pixels[:100], [test // 5, test]),
             "fine_label_names.txt": "\n".join(FINE_NAMES).encode(),
             "coarse_label_names.txt": "\n".join(COARSE_NAMES).encode()}
    root = tmp_path_factory.mktemp("cifar100")
    write_archive(root / "cifar-100-binary.tar.gz", "cifar-100-binary", files)
    return root, fine


@pytest.fixture(scope="module")
def tiny_unclip(tmp_path_factory):
    return build_tiny_unclip_pipeline(tmp_path_factory.mktemp("tiny-unclip") / "pipeline")


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="JPEG")


def _places_lt(root):
    """Places-LT's layout: train lines ``data_256/<letter>/<category>/<n>.jpg label``, val and test lines
    ``val_256/Places365_val_<n>.jpg label``, lists ``Places_LT_{train,val,test}.txt`` in root."""
    categories, counts = ["a/airfield", "a/apartment_building/outdoor", "b/bakery/shop"], [7, 4, 2]
    train = [(f"data_256/{category}/{i + 1:08d}.jpg", label)
             for label, (category, n) in enumerate(zip(categories, counts)) for i in range(n)]
    held_out = [(f"val_256/Places365_val_{k + 1:08d}.jpg", k % 3) for k in range(9)]  # 1 val + 2 test per class
    for split, entries in {"train": train, "val": held_out[:3], "test": held_out[3:]}.items():
        for value, (rel, _) in enumerate(entries):
            _jpeg(root / rel, {"train": 0, "val": 100, "test": 150}[split] + value)
        (root / f"Places_LT_{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return root


def _caltech(root, classes=("BACKGROUND_Google", "accordion", "airplanes"), per_class=32):
    """101_ObjectCategories as extracted: root/<class>/image_<n>.jpg."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            _jpeg(root / name / f"image_{i + 1:04d}.jpg", 40 * c + i)
    return root


# ------------------------------------------------------------------------------------------ helpers
def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _stats(capsys, config, tmp_path, *overrides):
    """`synthaug stats CONFIG --set ...`: (per-class (count, shot group) from its table, its stdout)."""
    overrides = [f"output_dir={tmp_path / 'runs'}", *overrides]
    assert main(["stats", str(CONFIGS / config), *_sets(overrides)]) == 0
    out = capsys.readouterr().out
    table = {m.group(1): (int(m.group(2)), m.group(3)) for line in out.splitlines() if (m := SHOT_LINE.match(line))}
    return table, out


def _context(config, tmp_path, *overrides):
    """The run context of CONFIG with the overrides: its splits and its generation plan."""
    from synthaug.runner import open_run

    return open_run(load_config(CONFIGS / config, [f"output_dir={tmp_path / 'runs'}", *overrides]))


def _sha256_line(out):
    return next(line for line in out.splitlines() if line.startswith("training subset sha256: ")).split(": ")[1]


def _run(config, tmp_path, *overrides):
    assert main(["run", str(CONFIGS / config), *_sets([f"output_dir={tmp_path / 'runs'}", *overrides])]) == 0
    return tmp_path / "runs" / load_config(CONFIGS / config, list(overrides)).name


def _shot(n):
    return "many" if n > 100 else "few" if n < 20 else "medium"


# ------------------------------------------------------------------------------------------ every file
NEW_CONFIGS = ["cifar10_lt.yaml", "cifar10_replacement.yaml", "cifar10_lt_classmap.yaml", "cifar100_lt.yaml",
               "imagenet_lt.yaml", "places_lt.yaml", "fewshot.yaml", "cifar10_mvc.yaml"]


@pytest.mark.parametrize("config", NEW_CONFIGS)
def test_each_config_names_its_study_and_validates(config):
    """Each file opens with the study (or benchmark paper) it reproduces, and loads: every key is one synthaug knows."""
    text = (CONFIGS / config).read_text()
    assert re.search(r"(study 00[123]|Liu et al)", text.split("\n\n")[0].split("name:")[0])
    load_config(CONFIGS / config)  # every key is one synthaug knows


# ------------------------------------------------------------------------------------------ CIFAR
def test_cifar10_lt_is_cao2019_with_its_fingerprint_and_balances_to_the_head(cifar10, tmp_path, capsys):
    root, labels = cifar10
    table, out = _stats(capsys, "cifar10_lt.yaml", tmp_path, f"data.root={root}")
    counts = cao2019_counts(PER_CLASS, 10, 100)
    assert counts == [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]  # 5000, 2997, ..., 50 scaled to 100 per class
    assert table == {c: (n, _shot(n)) for c, n in zip(CIFAR10_NAMES, counts)}
    assert _sha256_line(out) == training_subset_sha256(cao2019_indices(labels, 10, 100))
    ctx = _context("cifar10_lt.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [PER_CLASS - n for n in counts]  # balance: everyone up to the head
    assert all(i.startswith("cifar10:train:") for i in ctx.splits.val.ids)  # validation never from test
    assert len(ctx.splits.test) == 10 * TEST_PER_CLASS
    assert ctx.cfg.evaluation.targeted.classes == ["truck", "ship"] and ctx.cfg.evaluation.targeted.count == 500


def test_the_classmap_config_trains_on_the_same_subset_and_plans_truck_and_ship(cifar10, tmp_path, capsys):
    root, labels = cifar10
    _, out = _stats(capsys, "cifar10_lt_classmap.yaml", tmp_path, f"data.root={root}")
    assert _sha256_line(out) == training_subset_sha256(cao2019_indices(labels, 10, 100))
    plan = _context("cifar10_lt_classmap.yaml", tmp_path, f"data.root={root}").plan_counts
    assert dict(zip(CIFAR10_NAMES, plan.tolist())) == {**{c: 0 for c in CIFAR10_NAMES}, "truck": 500, "ship": 500}


def test_replacement_trains_on_all_of_balanced_cifar10(cifar10, tmp_path, capsys):
    root, _ = cifar10
    table, out = _stats(capsys, "cifar10_replacement.yaml", tmp_path, f"data.root={root}")
    assert table == {c: (PER_CLASS, "medium") for c in CIFAR10_NAMES}  # no long tail, no validation carved
    ctx = _context("cifar10_replacement.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [12] * 10  # the study's 600 of 5,000 per class: 12 %
    assert ctx.cfg.evaluation.replacement.enabled and max(ctx.cfg.evaluation.replacement.percents) == 12
    assert ctx.cfg.train.epochs == 50  # Table 2


def test_mvc_reduced_cifar10_keeps_k_per_class(cifar10, tmp_path, capsys):
    root, _ = cifar10
    # the config keeps 400 per class (4,000 images); the fixture has 100 per class, 50 of them validation
    table, _ = _stats(capsys, "cifar10_mvc.yaml", tmp_path, f"data.root={root}", "data.fewshot.shots=8")
    assert table == {c: (8, "few") for c in CIFAR10_NAMES}
    ctx = _context("cifar10_mvc.yaml", tmp_path, f"data.root={root}", "data.fewshot.shots=8")
    assert ctx.plan_counts.tolist() == [24] * 10  # three synthetic images per real one
    assert load_config(CONFIGS / "cifar10_mvc.yaml").data.fewshot.shots * 10 == 4000


def test_cifar100_lt_is_cao2019(cifar100, tmp_path, capsys):
    root, fine = cifar100
    table, out = _stats(capsys, "cifar100_lt.yaml", tmp_path, f"data.root={root}")
    counts = cao2019_counts(PER_CLASS, 100, 100)
    assert table == {c: (n, _shot(n)) for c, n in zip(FINE_NAMES, counts)}
    assert _sha256_line(out) == training_subset_sha256(cao2019_indices(fine, 100, 100))
    ctx = _context("cifar100_lt.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [PER_CLASS - n for n in counts]


# ------------------------------------------------------------------------------------------ lists, folders
def test_imagenet_lt_lists_and_the_1280_target(tmp_path, capsys):
    root = tmp_path / "imagenet"
    _imagenet_lt(root)
    table, _ = _stats(capsys, "imagenet_lt.yaml", tmp_path, f"data.root={root}")
    assert table == {s: (n, "few") for s, n in zip(SYNSETS, TRAIN_COUNTS)}
    ctx = _context("imagenet_lt.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [1280 - n for n in TRAIN_COUNTS]
    assert ctx.splits.val.class_counts().tolist() == [1] * 4  # ImageNet_LT_val.txt, not carved, not test
    assert len(ctx.splits.test) == 8


def test_places_lt_lists(tmp_path, capsys):
    root = _places_lt(tmp_path / "places365")
    table, _ = _stats(capsys, "places_lt.yaml", tmp_path, f"data.root={root}")
    assert table == {"airfield": (7, "few"), "outdoor": (4, "few"), "shop": (2, "few")}
    ctx = _context("places_lt.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [1273, 1276, 1278]
    assert len(ctx.splits.val) == 3 and len(ctx.splits.test) == 6


def test_fewshot_keeps_k_per_class_and_each_draw_is_its_own(tmp_path, capsys):
    root = _caltech(tmp_path / "101_ObjectCategories")
    table, _ = _stats(capsys, "fewshot.yaml", tmp_path, f"data.root={root}")
    assert table == {"BACKGROUND_Google": (16, "few"), "accordion": (16, "few"), "airplanes": (16, "few")}
    ctx = _context("fewshot.yaml", tmp_path, f"data.root={root}")
    assert ctx.plan_counts.tolist() == [160] * 3  # M = 10 per real image
    other = _context("fewshot.yaml", tmp_path / "draw1", f"data.root={root}", "data.fewshot.draw=1")
    assert other.splits.train.ids != ctx.splits.train.ids and other.splits.val.ids == ctx.splits.val.ids


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_cifar10_lt_runs_end_to_end(cifar10, tmp_path):
    root, _ = cifar10
    run = _run("cifar10_lt.yaml", tmp_path, f"data.root={root}", *TINY_DDPM, *TINY_CLASSIFIER, "plan.target=12",
               "evaluation.targeted.count=2", "judge.enabled=false")
    for arm in ("real-ce", "ddpm-balanced", "pseudo-control"):
        assert (run / "train" / arm / "seed0" / "metrics.json").is_file()
    targeted = json.loads((run / "evaluation" / "targeted" / "targeted.json").read_text())
    assert targeted["classes"] == ["truck", "ship"] and targeted["count_per_class"] == 2
    assert sum(targeted["control_label_counts"]) == 4  # the pseudo-labelled control: as many images
    assert not (run / "evaluation" / "replacement" / "replacement.json").exists()


@pytest.mark.slow
def test_classmap_runs_end_to_end_with_a_tiny_dit(cifar10, tmp_path):
    root, _ = cifar10
    dit = build_tiny_dit_pipeline(tmp_path / "tiny-dit")
    run = _run("cifar10_lt_classmap.yaml", tmp_path, f"data.root={root}", f"generator.params.model={dit}",
               "generator.params.sampling_steps=1", "plan.counts={truck: 2, ship: 2}", *TINY_CLASSIFIER,
               "judge.enabled=false")
    lines = [json.loads(line) for line in (run / "synthetic" / "metadata.jsonl").read_text().splitlines()]
    drawn = {(r["label"], r["model_class_id"]) for r in lines}
    assert {label for label, _ in drawn} == {"truck", "ship"}
    assert all(cls in ({555, 569, 717, 864, 867} if label == "truck" else {510, 724}) for label, cls in drawn)
    assert (run / "train" / "imagenet-truck-ship" / "seed0" / "metrics.json").is_file()


@pytest.mark.slow
def test_imagenet_lt_runs_end_to_end_with_50_50_batches(tmp_path, tiny_unclip):
    root = tmp_path / "imagenet"
    _imagenet_lt(root)
    run = _run("imagenet_lt.yaml", tmp_path, f"data.root={root}", f"generator.params.model={tiny_unclip}",
               "generator.params.num_inference_steps=2", "plan.target=8", "train.batch_size=8",
               "train.image_size=32", *TINY_CLASSIFIER)
    lines = (run / "synthetic" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == sum(8 - n for n in TRAIN_COUNTS)
    config = json.loads((run / "train" / "augcond-bsm" / "seed0" / "train_config.json").read_text())
    assert (config["loss"], config["mixing"], config["synthetic_share"]) == ("balanced-softmax", "balanced-batch", 0.5)


@pytest.mark.slow
def test_fewshot_runs_end_to_end_training_only_the_last_layer(tmp_path, tiny_unclip):
    root = _caltech(tmp_path / "101_ObjectCategories")
    run = _run("fewshot.yaml", tmp_path, f"data.root={root}", f"generator.params.model={tiny_unclip}",
               "generator.params.num_inference_steps=2", "plan.ratio=0.25", "train.model.pretrained=false",
               "train.image_size=32", *TINY_CLASSIFIER[1:])
    meta = json.loads((run / "train" / "augcond-50-50" / "seed0" / "model" / "classifier.json").read_text())
    assert meta["model"]["name"] == "resnet50" and meta["model"]["freeze"] == "all-but-head"
    assert meta["parameters"]["trainable"] == 2048 * 3 + 3  # the linear head alone
