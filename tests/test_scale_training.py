"""Classifier training at scale (#10): two processes under ``accelerate launch`` (gloo on CPU) train one model,
the main process alone writes, and its checkpoint reloads; images are decoded on demand under a cache budget."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import shapes
from synthaug.cli import main
from synthaug.data import LabeledImages, LabelSchema
from synthaug.processes import Processes
from synthaug.train import checkpoint
from synthaug.train.config import TrainConfig
from synthaug.train.data import ImageSet
from synthaug.train.loop import train_classifier
from synthaug.train.models import create_classifier, load_classifier

TESTS = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).with_name("accelerate")
SCHEMA = LabelSchema.from_dict(shapes.GROUPS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 CPU processes of one thread each (``--multi_gpu`` picks the torchrun launcher;
    with ``device: cpu`` accelerate sets up gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


TINY = {"name": "tiny", "seeds": [0], "progress": False, "device": "cpu",
        "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
        "arms": [{"name": "real-bsm", "train": {"loss": "balanced-softmax", "mixing": "real-only"}}],
        "pseudo": {"classifier_arm": "real-bsm"},
        "train": {"epochs": 2, "batch_size": 31, "precision": "fp32"},
        "judge": {"enabled": False}, "evaluation": {"enabled": False}}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_two_process_run_writes_what_one_process_writes(tmp_path, capsys):
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / name)}))
    assert main(["run", str(tmp_path / "one.yaml")]) == 0
    done = _launch("-m", "synthaug.cli", "run", str(tmp_path / "two.yaml"), cwd=tmp_path)
    assert "Training data-parallel on 2 processes" in done.stderr
    assert done.stdout.count("| real-bsm |") == 1  # the main process alone prints the report
    one, two = tmp_path / "one" / "tiny", tmp_path / "two" / "tiny"
    assert _files(one) == _files(two)  # same records and results, no leftovers (checkpoint, temp files)
    arm = Path("train/real-bsm/seed0")
    assert json.loads((one / arm / "metrics.json").read_text()).keys() == \
        json.loads((two / arm / "metrics.json").read_text()).keys()
    rows = [list(csv.DictReader(open(r / arm / "curves.csv"))) for r in (one, two)]
    assert [list(r[0]) for r in rows][0] == list(rows[1][0]) and len(rows[0]) == len(rows[1]) == 2
    model, meta = load_classifier(two / arm / "model")
    assert meta["image_size"] == 8 and 0 <= json.loads((two / arm / "done.json").read_text())["accuracy"] <= 1


def test_two_process_checkpoint_holds_every_process_reloads_and_resumes_exactly(tmp_path):
    _launch(str(TESTS / "ddp_worker.py"), str(tmp_path / "run"), cwd=tmp_path)
    last = tmp_path / "run" / "last"
    assert {"rng.safetensors", "rng_rank1.safetensors", "model.safetensors", "trainer.pt"} <= _files(last)
    model = create_classifier(TrainConfig().model.model_copy(update={"dropout": 0.3}), SCHEMA, 3)
    trainer, curves = checkpoint.load(checkpoint.find(last), model, rank=1)
    assert trainer["epoch"] == 2 and [r["epoch"] for r in curves] == [1, 2] and "val_acc" in curves[-1]
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, final[k]), k
    # every step saw the whole batch: as many optimizer steps as one process takes (48 images, batches of 15)
    assert trainer["schedule"]["last_epoch"] == 2 * 4

    # interrupted after epoch 1, relaunched: every process resumes from its own random states, bit-exactly
    _launch(str(TESTS / "ddp_worker.py"), str(tmp_path / "resumed"), "1", cwd=tmp_path)
    assert torch.load(tmp_path / "resumed" / "last" / "trainer.pt", weights_only=True)["epoch"] == 1
    _launch(str(TESTS / "ddp_worker.py"), str(tmp_path / "resumed"), cwd=tmp_path)
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert (tmp_path / "run" / "curves.csv").read_text() == (tmp_path / "resumed" / "curves.csv").read_text()


def test_sharding_pads_odd_batches_and_covers_every_key():
    batches = [list(range(5)), [5, 6]]
    shards = [Processes(r, 3).shard(batches) for r in range(3)]
    assert [len(s[0]) for s in shards] == [2, 2, 2] and [len(s[1]) for s in shards] == [1, 1, 1]
    assert {k for s in shards for k in s[0]} == set(range(5)) and {k for s in shards for k in s[1]} == {5, 6}
    assert Processes().shard(batches) is batches


def _images(n, seed):
    pixels, labels = shapes.make_split(n, seed, long_tailed=False)
    return LabeledImages(SCHEMA, labels, [f"{seed}:{i}" for i in range(n)], pixels=pixels)


def test_images_are_decoded_on_demand_and_cached_up_to_the_budget(tmp_path):
    real = _images(10, 0)
    one_image = 3 * 16 * 16  # bytes of one resized uint8 image
    data = ImageSet(real, None, lambda x: x.float(), 16, cache_mb=3.5 * one_image / 2**20)
    assert data.cached_bytes == 0  # nothing decoded up front
    first = [data[i][0] for i in range(10)]
    assert data.cached_bytes == 3 * one_image and len(data._cache) == 3  # the budget holds three images
    again = [data[i][0] for i in range(10)]  # cached or decoded again, the same pixels
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert ImageSet(real, None, lambda x: x, 16, cache_mb=0)[0][0].shape == (3, 16, 16)


def test_image_cache_is_a_performance_setting(tmp_path):
    real, synthetic = _images(24, 0), _images(8, 5)
    cfg = TrainConfig(epochs=1, batch_size=8, augment="soft", mixing="combined", precision="fp32")
    train_classifier(real, synthetic, cfg, tmp_path / "cached", progress=False)
    train_classifier(real, synthetic, cfg.model_copy(update={"image_cache_mb": 0}), tmp_path / "uncached",
                     progress=False)
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("cached", "uncached"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recorded_splits_are_read_back_without_decoding_images(image_tree, tmp_path, monkeypatch):
    from synthaug.config import build_config
    from synthaug.data import sources
    from synthaug.runner import open_run
    from synthaug.runner.data import data_stage

    root = image_tree()
    (root / "owl" / "005.png").write_bytes(b"not a png")  # a bad image, skipped
    cfg = build_config({"name": "folder", "output_dir": str(tmp_path / "runs"), "progress": False,
                        "data": {"source": "imagefolder", "root": str(root), "on_bad_image": "skip",
                                 "test_per_class": 2, "val_per_class": 1}})
    first = open_run(cfg)
    data_stage(first)
    decoded = []
    check = sources.decode_problem
    monkeypatch.setattr(sources, "decode_problem", lambda path, mode: decoded.append(path) or check(path, mode))
    again = open_run(cfg)
    for split in ("train", "val", "test"):
        assert getattr(again.splits, split).ids == getattr(first.splits, split).ids
        assert (getattr(again.splits, split).labels == getattr(first.splits, split).labels).all()
    assert decoded == [] and len(again.splits.train.skipped) == 1 and "005.png" in again.splits.train.skipped[0]
    data_stage(again)  # the data stage is still done with the same fingerprint
    assert again.data_fp == first.data_fp
    assert len(again.balanced_pool) == len(first.balanced_pool) and decoded  # the pool is checked when used

    (root / "cat" / "000.png").unlink()  # a recorded image is gone: the source is loaded and checked again
    decoded.clear()
    third = open_run(cfg)
    assert "cat/000.png" not in third.splits.train.ids + third.splits.val.ids + third.splits.test.ids and decoded


def test_pretrained_timm_models_train_at_their_configs_size_and_normalisation(tmp_path):
    from synthaug.train.augment import create_transform, eval_transform
    from synthaug.train.config import ModelConfig
    from synthaug.train.loop import training_image_size
    from synthaug.train.models import pretrained_normalization, save_classifier

    real = _images(4, 0)  # 32×32 images
    random_init = create_classifier(ModelConfig(name="test_resnet"), SCHEMA, 3)
    assert random_init.normalization is None  # random weights: the presets' default, the images' own size
    assert training_image_size(TrainConfig(model={"name": "test_resnet"}), random_init, real) == 32
    # what pretrained: true reads (weights themselves need a download, so the flag is set on the config only)
    pretrained = ModelConfig(name="test_resnet", pretrained=True)
    assert training_image_size(TrainConfig(model=pretrained.model_dump()), random_init, real) == 160
    assert training_image_size(TrainConfig(model=pretrained.model_dump(), image_size=48), random_init, real) == 48
    stats = pretrained_normalization(pretrained, random_init.backbone, 3)
    assert stats == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert pretrained_normalization(pretrained, random_init.backbone, 1) is None  # no per-channel values
    white = torch.full((3, 16, 16), 255, dtype=torch.uint8)
    assert torch.allclose(eval_transform(3, 16, stats)(white), torch.ones(3, 16, 16))  # (1 - 0.5) / 0.5
    assert torch.allclose(create_transform("basic", 3, 16, stats)(white), torch.ones(3, 16, 16))
    assert not torch.allclose(eval_transform(3, 16)(white), torch.ones(3, 16, 16))  # ImageNet statistics
    random_init.normalization = stats  # saved with the model and restored on load, for predict and evaluation
    save_classifier(random_init, ModelConfig(name="test_resnet"), SCHEMA, 3, 160, tmp_path / "model")
    assert load_classifier(tmp_path / "model")[0].normalization == stats
