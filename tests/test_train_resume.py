"""Classifier training resumes bit-exactly, keeps its checkpoint for the caller, never retrains a finished run,
records the loss prior, scales fp16 losses and passes drop_rate to timm (#12). Tiny CPU runs."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import shapes
from synthaug.data import LabeledImages, LabelSchema
from synthaug.train import loop
from synthaug.train.config import ModelConfig, TrainConfig
from synthaug.train.models import create_classifier

SCHEMA = LabelSchema.from_dict(shapes.GROUPS)
# augmentation, dropout (head and backbone), CutMix and a real + synthetic mix: every source of randomness
CFG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=1, augment="soft", batch_mix="cutmix",
                  mixing="combined", loss="balanced-softmax", model={"dropout": 0.3, "drop_rate": 0.2})


def _images(n, seed, long_tailed=True):
    pixels, labels = shapes.make_split(n, seed, long_tailed=long_tailed)
    return LabeledImages(SCHEMA, labels, [f"{seed}:{i}" for i in range(n)], pixels=pixels)


@pytest.fixture(scope="module")
def data():
    return _images(32, 0), _images(16, 5, long_tailed=False)


def _weights(workdir):
    return load_file(workdir / "model" / "model.safetensors")


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Killed(Exception):
    pass


def _train_until_killed(real, synthetic, cfg, workdir, monkeypatch, after_epoch):
    save = loop._checkpoint

    def save_then_die(folder, model, optimizer, schedule, scaler, epoch, curves, **kwargs):
        save(folder, model, optimizer, schedule, scaler, epoch, curves, **kwargs)
        if epoch == after_epoch:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(loop, "_checkpoint", save_then_die)
        with pytest.raises(Killed):
            loop.train_classifier(real, synthetic, cfg, workdir, progress=False, seed=3)


def test_interrupted_then_resumed_run_ends_with_identical_weights(data, tmp_path, monkeypatch):
    real, synthetic = data
    loop.train_classifier(real, synthetic, CFG, tmp_path / "whole", progress=False, seed=3)
    _train_until_killed(real, synthetic, CFG, tmp_path / "resumed", monkeypatch, after_epoch=1)
    assert (tmp_path / "resumed" / "last" / "rng.safetensors").is_file()
    torch.manual_seed(123)  # the resumed process starts with other global random states
    np.random.seed(123)
    loop.train_classifier(real, synthetic, CFG, tmp_path / "resumed", progress=False, seed=3)
    _assert_same(_weights(tmp_path / "whole"), _weights(tmp_path / "resumed"))
    assert (tmp_path / "whole" / "curves.csv").read_text() == (tmp_path / "resumed" / "curves.csv").read_text()
    assert not (tmp_path / "resumed" / "last").exists()


def test_loader_workers_do_not_change_the_result(data, tmp_path):
    real, synthetic = data
    cfg = CFG.model_copy(update={"epochs": 1})
    loop.train_classifier(real, synthetic, cfg, tmp_path / "main", progress=False)
    loop.train_classifier(real, synthetic, cfg.model_copy(update={"num_workers": 1}), tmp_path / "workers",
                          progress=False)
    _assert_same(_weights(tmp_path / "main"), _weights(tmp_path / "workers"))


def test_kept_checkpoint_means_no_retraining_and_a_crash_mid_swap_keeps_the_previous_one(data, tmp_path, caplog):
    real, synthetic = data
    cfg = CFG.model_copy(update={"epochs": 2})
    work = tmp_path / "run"
    loop.train_classifier(real, synthetic, cfg, work, progress=False, keep_checkpoint=True)
    assert torch.load(work / "last" / "trainer.pt", weights_only=True)["epoch"] == 2
    first = _weights(work)
    # a crash between moving the old checkpoint aside and renaming the new one in leaves only last.old
    (work / "last").rename(work / "last.old")
    with caplog.at_level("INFO", logger="synthaug.train.loop"):
        loop.train_classifier(real, synthetic, cfg, work, progress=False, keep_checkpoint=True)
    assert "all 2 epochs are done; not retraining" in caplog.text
    _assert_same(first, _weights(work))
    assert len((work / "curves.csv").read_text().splitlines()) == 3  # header + 2 epochs, none added


def test_prior_json_records_the_prior_of_each_phase(data, tmp_path):
    real, synthetic = data
    cfg = TrainConfig(epochs=1, phase2_epochs=1, mixing="two-phase", loss="weighted-ce", batch_size=32)
    loop.train_classifier(real, synthetic, cfg, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "prior.json").read_text())
    assert (record["loss"], record["prior"], set(record["phases"])) == ("weighted-ce", "auto", {"1", "2"})
    colour = {p: record["phases"][p]["groups"]["colour"] for p in ("1", "2")}
    both = np.concatenate([real.labels[:, 0], synthetic.labels[:, 0]])
    assert list(colour["1"].values()) == pytest.approx(np.bincount(both, minlength=7) / len(both))
    assert list(colour["2"].values()) == pytest.approx(np.bincount(real.labels[:, 0], minlength=7) / len(real))
    assert "real + synthetic" in record["phases"]["1"]["rule"] and "real" in record["phases"]["2"]["rule"]


def test_fp16_scales_the_loss_and_skips_overflowing_steps():
    assert loop.grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not loop.grad_scaler("bf16", torch.device("cpu")).is_enabled()
    assert not loop.grad_scaler("fp32", torch.device("cpu")).is_enabled()
    # an overflowing step (inf loss) is skipped by the scaler, not applied to the weights
    model = create_classifier(ModelConfig(), SCHEMA, 3)
    before = {k: v.clone() for k, v in model.state_dict().items() if "head" in k}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    labels = torch.zeros(4, 6, dtype=torch.long)
    batches = [(torch.randn(4, 3, 16, 16), labels, torch.zeros(4, dtype=torch.bool))]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)

    def overflowing(logits, y):
        return logits.sum() * float("inf")

    loop._train_epoch(model, batches, lambda x, y: (x, y), overflowing, optimizer, schedule, scaler,
                      torch.device("cpu"), "fp32")
    assert scaler.get_scale() == 2.0**15  # backed off
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA")
def test_fp16_training_on_cuda_keeps_the_scale_in_the_checkpoint(data, tmp_path):
    real, synthetic = data
    cfg = CFG.model_copy(update={"epochs": 1, "precision": "fp16"})
    loop.train_classifier(real, synthetic, cfg, tmp_path / "run", device="cuda", progress=False,
                          keep_checkpoint=True)
    scaler = torch.load(tmp_path / "run" / "last" / "trainer.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


def test_timm_backbones_get_drop_rate():
    torch.manual_seed(0)
    model = create_classifier(ModelConfig(name="test_resnet", drop_rate=0.5), SCHEMA, 3)
    assert model.backbone.drop_rate == 0.5
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model.backbone(x), model.backbone(x))  # dropout on the pooled features
    plain = create_classifier(ModelConfig(name="test_resnet"), SCHEMA, 3).train()
    assert plain.backbone.drop_rate == 0 and torch.equal(plain.backbone(x), plain.backbone(x))
