"""Classifier training: any model, loss, augmentation preset, MixUp / CutMix (``batch_mix``) and batch composition
of real + synthetic images (``mixing``), with linear warm-up then cosine decay (plus a real-only fine-tuning phase
for ``two-phase``), per-epoch checkpoints (bit-exact resume after an interruption) and curves (CSV + PNG, with the
phase of each epoch).

Under ``accelerate launch`` with several processes the same function trains data-parallel (DDP): each process
takes its share of every batch (:mod:`synthaug.processes`) and the main process alone writes files."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synthaug.data.schema import LabeledImages
from synthaug.errors import SettingError
from synthaug.processes import Processes
from synthaug.train.augment import create_transform, eval_transform
from synthaug.train.batch_composition import batch_prior, make_batches
from synthaug.train import checkpoint
from synthaug.train.data import EpochBatches, ImageSet, seeded_batches
from synthaug.train.config import PRIOR_LOSSES, TrainConfig
from synthaug.train.curves import training_curves_plot, write_curves
from synthaug.train.losses import create_loss
from synthaug.train.mixup import create_mixup_cutmix, hard_labels
from synthaug.train.models import (
    Classifier, create_classifier, parameter_counts, pretrained_input_size, save_classifier,
)
from synthaug.torch_utils import autocast, resolve_precision, seed_everything
from synthaug.utils import derive_seed, write_json

log = logging.getLogger(__name__)


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
    data = ImageSet(images, None, eval_transform(images.channels, image_size, model.normalization), image_size)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    return torch.cat([model(x.to(device)).float().cpu() for x, _, _ in loader])


def image_size_of(images: LabeledImages) -> int:
    w, h = images.image(0).size
    return min(w, h)


def training_image_size(cfg: TrainConfig, model: Classifier, real: LabeledImages) -> int:
    """``train.image_size`` when set; else the input size of a pretrained timm model's config (the size its
    weights were trained at); else (small-cnn, or timm from random initialisation) the first real image's
    shorter side."""
    return cfg.image_size or pretrained_input_size(cfg.model, model.backbone) or image_size_of(real)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor of diffusers' ``get_cosine_schedule_with_warmup``: linear from 0 to 1 over
    ``warmup`` steps, then half a cosine down to 0 at ``total``."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_phase1: int,
                steps_phase2: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine over the ``epochs`` of phase 1; for ``two-phase``, then a second cosine from
    ``lr × phase2_lr_scale`` to 0 over the ``phase2_epochs`` (no warm-up).

    Args:
        steps_phase1: optimizer steps per epoch in phase 1.
        steps_phase2: optimizer steps per epoch in phase 2.
    """
    warmup, n1 = round(cfg.warmup_epochs * steps_phase1), cfg.epochs * steps_phase1
    n2 = cfg.phase2_epochs * steps_phase2

    def factor(step: int) -> float:
        if step < n1 or not n2:
            return warmup_cosine(step, warmup, n1)
        return cfg.phase2_lr_scale * warmup_cosine(step - n1, 0, n2)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_classifier(
    real: LabeledImages, synthetic: LabeledImages | None, cfg: TrainConfig, workdir: str | Path, *,
    val: LabeledImages | None = None, device: torch.device | str = "cpu", seed: int = 0, progress: bool = True,
    keep_checkpoint: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
    processes: Processes = Processes(),
) -> Classifier:
    """Trains a classifier and saves it to ``workdir/model``; resumes from ``workdir/last`` if present.

    An interrupted run, resumed, ends with the same weights as an uninterrupted one: the epoch checkpoint
    holds the random states too, every image's augmentation is seeded by (seed, epoch, position) and loader
    workers by (seed, epoch), so neither the resume point nor ``num_workers`` changes the result.

    With ``train.synthetic_weight`` ω ≠ 1 every synthetic image's loss is multiplied by ω; with
    ``train.translation_labels.mode: soft`` or ``train.relabel`` the synthetic images train on their soft targets
    (:attr:`LabeledImages.targets`, set by :func:`synthaug.train.data.attach_translation_targets` and
    :func:`synthaug.train.data.relabelled_images`).

    Logs the trainable / total parameter counts at the start (and saves them in ``model/classifier.json``);
    writes ``prior.json`` (the class prior of weighted-ce / balanced-softmax, per phase) and ``curves.csv`` /
    ``curves.png`` (epoch, phase, lr, train and val loss and accuracy).

    Args:
        keep_checkpoint: leave ``workdir/last`` in place at the end (the caller deletes it once it has used the
            model, e.g. after evaluating it); calling again then returns without retraining.
        processes: the processes training together (``Processes.launched(device)`` under ``accelerate
            launch``; every one of them calls this function). Only the main one writes files and computes the
            validation metrics; the checkpoint holds every process's random states.

    Returns:
        The trained model (eval mode).

    Raises:
        SettingError: soft targets asked for (``translation_labels.mode: soft``, ``relabel``) but the synthetic
            images carry none.
    """
    workdir, device = Path(workdir), processes.device(torch.device(device))
    soft = cfg.soft_targets
    if soft and synthetic is not None and len(synthetic) and synthetic.targets is None:
        if cfg.translation_labels.mode == "soft":
            raise SettingError("train.translation_labels.mode is 'soft', but the synthetic images carry no soft "
                               "targets; load them through synthaug.train.data.attach_translation_targets (with the "
                               "store's manifest records), or set translation_labels.mode: hard.")
        raise SettingError(f"train.relabel.weight is {cfg.relabel.weight}, but the synthetic images carry no soft "
                           "targets; add the stand-ins with synthaug.train.data.with_stand_ins (which gives every "
                           "image its target), or set relabel.weight: 0.")
    main = processes.is_main
    seed_everything(seed)
    precision = resolve_precision(cfg.precision, device, what="train.precision")
    model = create_classifier(cfg.model, real.schema, real.channels).to(device)
    image_size = training_image_size(cfg, model, real)
    trainable, total = parameter_counts(model)
    log.info("%s: %s trainable / %s total parameters (freeze=%s)", cfg.model.name, f"{trainable:,}", f"{total:,}",
             cfg.model.freeze)
    transform = create_transform(cfg.augment, real.channels, image_size, model.normalization)
    data = ImageSet(real, synthetic, transform, image_size, cache_mb=cfg.image_cache_mb, soft_targets=soft)
    synth_labels = data.labels[data.num_real:]
    criteria = _criteria(cfg, real, synth_labels, workdir if main else None, device)
    mixup = create_mixup_cutmix(cfg.batch_mix, real.schema.group_sizes, cfg.batch_mix_alpha)

    def epoch_batches(epoch: int):
        rng = np.random.default_rng(derive_seed(seed, "epoch", epoch))
        return make_batches(cfg.mixing, real.labels, synth_labels, batch_size=cfg.batch_size, rng=rng,
                            synthetic_share=cfg.synthetic_share, phase=cfg.phase(epoch))

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    schedule = lr_schedule(optimizer, cfg, len(epoch_batches(0)),
                           len(epoch_batches(cfg.epochs)) if cfg.phase2_epochs else 0)
    scaler = grad_scaler(precision, device)
    start, curves = _resume(workdir / "last", model, optimizer, schedule, scaler, processes)
    if start >= cfg.total_epochs:
        log.info("%s: all %d epochs are done; not retraining.", workdir / "last", cfg.total_epochs)
    if processes.count > 1 and main:
        log.info("Training data-parallel on %d processes (each takes 1/%d of every batch of %d).",
                 processes.count, processes.count, cfg.batch_size)
    net = processes.wrap(model, device)
    sampler = EpochBatches()
    # one loader for all epochs: persistent workers keep their image caches (results do not depend on workers)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=_collate, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0,
                        generator=torch.Generator().manual_seed(derive_seed(seed, "loader", start)))
    bar = tqdm(range(start, cfg.total_epochs), initial=start, total=cfg.total_epochs,
               desc=f"train {workdir.parent.name}/{workdir.name}", unit="epoch", disable=not (progress and main))
    for epoch in bar:
        sampler.batches = processes.shard(seeded_batches(epoch_batches(epoch), derive_seed(seed, "augment", epoch)))
        criterion = criteria[cfg.phase(epoch)]
        row = {"epoch": epoch + 1, "phase": cfg.phase(epoch),
               **_train_epoch(net, loader, mixup, criterion, optimizer, schedule, scaler, device, precision,
                              processes=processes, synthetic_weight=cfg.synthetic_weight)}
        if val is not None and len(val) and main:
            logits = predict(model, val, image_size, device=device)
            row["val_loss"] = criterion(logits.to(device), torch.as_tensor(val.labels, device=device)).item()
            row["val_acc"] = _group_mean_correct(model, logits, torch.as_tensor(val.labels)) / len(val)
        curves.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_acc")})
        _checkpoint(workdir / "last", model, optimizer, schedule, scaler, epoch + 1, curves, processes=processes)
        if on_epoch_end is not None:
            on_epoch_end(epoch, dict(row))
    bar.close()
    del loader  # stops persistent workers
    if main:
        save_classifier(model, cfg.model, real.schema, real.channels, image_size, workdir / "model")
        write_curves(workdir / "curves.csv", curves)
        training_curves_plot(workdir / "curves.csv", workdir / "curves.png")
        if not keep_checkpoint:
            checkpoint.remove(workdir / "last")
    processes.barrier()  # the others return once the model is on disk
    return model.eval()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for fp16 training (bf16 and fp32 need none: the scaler is then a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _criteria(cfg: TrainConfig, real: LabeledImages, synth_labels: np.ndarray, workdir: Path | None,
              device: torch.device) -> dict[int, torch.nn.Module]:
    """The loss of each phase, built on the class prior of that phase's batches; writes ``prior.json`` (unless
    ``workdir`` is None):
    ``{"loss", "prior", "phases": {phase: {"rule", "groups": {group: {class: probability}}}}}``."""
    criteria, record = {}, {}
    for phase in sorted({cfg.phase(e) for e in range(cfg.total_epochs)}):
        counts, rule = batch_prior(cfg.mixing, real.labels, synth_labels, real.schema.group_sizes,
                                   batch_size=cfg.batch_size, synthetic_share=cfg.synthetic_share, phase=phase,
                                   prior=cfg.prior)
        criteria[phase] = create_loss(cfg.loss, counts, label_smoothing=cfg.label_smoothing,
                                      weight_k=cfg.weight_k).to(device)
        record[str(phase)] = {"rule": rule, "groups": {
            group.name: dict(zip(group.classes, (c / max(c.sum(), 1e-12)).tolist()))
            for group, c in zip(real.schema.groups, counts)}}
    if cfg.loss in PRIOR_LOSSES and workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "prior.json", {"loss": cfg.loss, "prior": cfg.prior, "phases": record})
    return criteria


def _train_epoch(model: torch.nn.Module, loader: DataLoader, mixup, criterion, optimizer, schedule,
                 scaler: torch.amp.GradScaler, device: torch.device, precision: str, *,
                 processes: Processes = Processes(), synthetic_weight: float = 1.0) -> dict:
    """One pass over ``loader``: ``{"lr": rate of the last step, "train_loss": ..., "train_acc": ...}``, the
    loss and accuracy over the images of all ``processes``.

    With ``synthetic_weight`` ω ≠ 1, synthetic images' losses are weighted by ω (real ones by 1); ``mixup``
    carries the weights through CutMix/MixUp (:meth:`synthaug.train.mixup.MixupCutmix.mix`).

    ``model`` is the classifier, or its DDP wrapper. With CutMix/MixUp the accuracy counts the class with the
    larger share of each soft target. With fp16 the loss is scaled (``scaler``); a step whose gradients overflow
    is skipped (on every process alike: DDP has averaged the gradients before the scaler checks them).
    """
    classifier = getattr(model, "module", model)
    model.train()
    total_loss, correct, seen, lr = 0.0, 0.0, 0, float("nan")
    for x, y, synthetic in loader:
        if synthetic_weight == 1:
            x, y = mixup(x.to(device), y.to(device))
            weights = None
        else:
            weights = torch.where(synthetic, synthetic_weight, 1.0).to(device)
            x, y, weights = mixup.mix(x.to(device), y.to(device), weights)
        with autocast(device, precision):
            logits = model(x)
        loss = criterion(logits.float(), y) if weights is None else criterion(logits.float(), y, weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = schedule.get_last_lr()[0]  # the rate this step used
        schedule.step()
        total_loss += loss.item() * len(x)
        hard = hard_labels(y, classifier.group_sizes) if y.dtype.is_floating_point else y
        correct += _group_mean_correct(classifier, logits.detach(), hard)
        seen += len(x)
    total_loss, correct, seen = processes.sum([total_loss, correct, seen])
    return {"lr": lr, "train_loss": total_loss / seen, "train_acc": correct / seen}


def _group_mean_correct(model: Classifier, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over samples of the fraction of label groups predicted right."""
    hits = [(lg.argmax(1) == labels[:, g]).float() for g, lg in enumerate(model.split_logits(logits))]
    return torch.stack(hits, 1).mean(1).sum().item()


def _checkpoint(folder: Path, model, optimizer, schedule, scaler, epoch: int, curves: list[dict], *,
                processes: Processes = Processes()) -> None:
    """The main process writes the epoch checkpoint, with the random states of every process."""
    rng_states = processes.gather(checkpoint.rng_state())
    if processes.is_main:
        trainer = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                   "scaler": scaler.state_dict(), "epoch": epoch}
        checkpoint.save(folder, model, trainer, curves, rng_states=rng_states)
    processes.barrier()


def _resume(folder: Path, model, optimizer, schedule, scaler,
            processes: Processes = Processes()) -> tuple[int, list[dict]]:
    found = checkpoint.find(folder)
    if found is not None:
        trainer, curves = checkpoint.load(found, model, rank=processes.index)
    processes.barrier()  # every process has read the checkpoint before the main one may replace or remove it
    if found is None:
        return 0, []
    optimizer.load_state_dict(trainer["optimizer"])
    schedule.load_state_dict(trainer["schedule"])
    if trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    log.info("Resuming classifier training from %s (epoch %d).", found, trainer["epoch"])
    return int(trainer["epoch"]), curves
