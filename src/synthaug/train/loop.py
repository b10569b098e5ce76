"""Classifier training: any model, loss, augmentation preset and real+synthetic mixing strategy, with
linear warm-up then cosine decay, per-epoch checkpoints (resume after an interruption) and curves."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages
from synthaug.report.plots import training_curves_plot
from synthaug.train.augment import AUGMENTS, create_transform, eval_transform
from synthaug.train.data import ImageSet
from synthaug.train.losses import LOSSES, create_loss
from synthaug.train.mixing import MIXING, make_batches
from synthaug.train.models import Classifier, ModelConfig, create_classifier, parameter_counts, save_classifier
from synthaug.utils import autocast, derive_seed, seed_everything

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: str = "ce"  # "ce", "weighted-ce" or "balanced-softmax"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    weight_k: float = Field(1.0, gt=0)  # weighted-ce: w_i = k / N_i
    mixing: str = "real-only"  # real-only, combined, balanced-batch, oversample
    synthetic_share: float = Field(0.5, ge=0, lt=1)  # balanced-batch: synthetic part of every batch
    augment: str = "none"  # augmentation preset, applied to real and synthetic images alike
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw
    momentum: float = 0.9  # sgd
    warmup_epochs: float = Field(1.0, ge=0)  # linear warm-up from 0, then cosine decay to 0
    image_size: int | None = None  # None: the real images' size
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_workers: int = Field(0, ge=0)

    @field_validator("loss")
    @classmethod
    def _loss_known(cls, v):
        LOSSES.get(v)
        return v

    @field_validator("mixing")
    @classmethod
    def _mixing_known(cls, v):
        MIXING.get(v)
        return v

    @field_validator("augment")
    @classmethod
    def _augment_known(cls, v):
        AUGMENTS.get(v)
        return v


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _collate(batch):
    images, labels, synthetic = zip(*batch)
    return torch.stack(images), torch.stack(labels), torch.as_tensor(synthetic)


@torch.no_grad()
def predict(model: Classifier, images: LabeledImages, image_size: int, *, device: torch.device,
            batch_size: int = 256) -> torch.Tensor:
    """Logits (N, Σ C_g) for ``images`` under the test-time transform."""
    model.eval()
    data = ImageSet(images, None, eval_transform(images.channels, image_size), image_size)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    return torch.cat([model(x.to(device)).float().cpu() for x, _, _ in loader])


def image_size_of(images: LabeledImages) -> int:
    w, h = images.image(0).size
    return min(w, h)


def train_classifier(
    real: LabeledImages, synthetic: LabeledImages | None, cfg: TrainConfig, workdir: str | Path, *,
    val: LabeledImages | None = None, device: torch.device | str = "cpu", seed: int = 0, progress: bool = True,
) -> Classifier:
    """Trains a classifier and saves it to ``workdir/model``; resumes from ``workdir/last`` if present.

    Returns:
        The trained model (eval mode).
    """
    workdir, device = Path(workdir), torch.device(device)
    seed_everything(seed)
    image_size = cfg.image_size or image_size_of(real)
    model = create_classifier(cfg.model, real.schema, real.channels).to(device)
    trainable, total = parameter_counts(model)
    log.info("%s: %s trainable / %s total parameters", cfg.model.name, f"{trainable:,}", f"{total:,}")
    data = ImageSet(real, synthetic, create_transform(cfg.augment, real.channels, image_size), image_size)
    synth_labels = data.labels[data.num_real:]
    counts = [np.bincount(real.labels[:, g], minlength=n) for g, n in enumerate(real.schema.group_sizes)]
    options = {"label_smoothing": cfg.label_smoothing} | ({"weight_k": cfg.weight_k} if cfg.loss == "weighted-ce" else {})
    criterion = create_loss(cfg.loss, counts, **options).to(device)

    def epoch_batches(epoch: int):
        rng = np.random.default_rng(derive_seed(seed, "epoch", epoch))
        return make_batches(cfg.mixing, real.labels, synth_labels, batch_size=cfg.batch_size, rng=rng,
                            synthetic_share=cfg.synthetic_share)

    steps_per_epoch = len(epoch_batches(0))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_epochs * steps_per_epoch),
                                               cfg.epochs * steps_per_epoch)
    start, curves = _resume(workdir / "last", model, optimizer, schedule)
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc=f"train {workdir.parent.name}/{workdir.name}",
               unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        loader = DataLoader(data, batch_sampler=epoch_batches(epoch), collate_fn=_collate,
                            num_workers=cfg.num_workers)
        total_loss, correct, seen = 0.0, 0.0, 0
        for x, y, _ in loader:
            x, y = x.to(device), y.to(device)
            with autocast(device, cfg.precision):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(x)
            correct += _group_mean_correct(model, logits.detach(), y)
            seen += len(x)
        row = {"epoch": epoch + 1, "lr": schedule.get_last_lr()[0], "train_loss": total_loss / seen,
               "train_acc": correct / seen}
        if val is not None and len(val):
            logits = predict(model, val, image_size, device=device)
            row["val_loss"] = criterion(logits.to(device), torch.as_tensor(val.labels, device=device)).item()
            row["val_acc"] = _group_mean_correct(model, logits, torch.as_tensor(val.labels)) / len(val)
        curves.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_acc")})
        _checkpoint(workdir / "last", model, optimizer, schedule, epoch + 1, curves)
    bar.close()
    save_classifier(model, cfg.model, real.schema, real.channels, image_size, workdir / "model")
    _write_curves(workdir / "curves.csv", curves)
    training_curves_plot(workdir / "curves.csv", workdir / "curves.png")
    shutil.rmtree(workdir / "last", ignore_errors=True)
    return model.eval()


def _group_mean_correct(model: Classifier, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over samples of the fraction of label groups predicted right."""
    hits = [(lg.argmax(1) == labels[:, g]).float() for g, lg in enumerate(model.split_logits(logits))]
    return torch.stack(hits, 1).mean(1).sum().item()


def _checkpoint(folder: Path, model, optimizer, schedule, epoch: int, curves: list[dict]) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch}, tmp / "trainer.pt")
    _write_curves(tmp / "curves.csv", curves)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _resume(folder: Path, model, optimizer, schedule) -> tuple[int, list[dict]]:
    if not (folder / "trainer.pt").is_file():
        return 0, []
    model.load_state_dict(load_file(folder / "model.safetensors"))
    state = torch.load(folder / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    with open(folder / "curves.csv") as f:
        curves = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    log.info("Resuming classifier training from %s (epoch %d).", folder, state["epoch"])
    return int(state["epoch"]), curves


def _write_curves(path: Path, curves: list[dict]) -> None:
    if not curves:
        return
    keys = list(dict.fromkeys(k for row in curves for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(curves)
