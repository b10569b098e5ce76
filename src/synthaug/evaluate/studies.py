"""Studies that judge a synthetic set by what a classifier learns from it:

- **CAS** (Classification Accuracy Score, Ravuri & Vinyals 2019): train on synthetic images only, test on real;
- **replacement** (the fidelity study of Basu et al., "Exploring Synthetic Data Generation using Diffusion
  Models"): replace x % of every class's real training images with synthetic ones of the class;
- **targeted classes** (same study): add N synthetic images to chosen classes, against real-only and against a
  pseudo-labelled control of the same count;
- **oracle**: the same classifier on the balanced real pool, an upper bound for the gap-closed share.

The pure parts (counts, selections) take arrays; :func:`train_and_test` trains with
:func:`synthaug.train.train_classifier` and tests on real images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from synthaug.data.schema import LabeledImages
from synthaug.data.stats import ShotThresholds
from synthaug.errors import SettingError
from synthaug.evaluate.metrics import classification_metrics, save_metrics
from synthaug.train import TrainConfig
from synthaug.utils import derive_seed, read_json


def replacement_counts(real_counts: Sequence[int], percent: float) -> np.ndarray:
    """Real images to replace per class: ``percent`` % of each class's count, rounded half up."""
    counts = np.asarray(real_counts, dtype=np.int64)
    return np.floor(counts * percent / 100.0 + 0.5).astype(np.int64)


def replace_real(real: LabeledImages, synthetic: LabeledImages, percent: float, *,
                 seed: int) -> tuple[LabeledImages, LabeledImages]:
    """The real images kept and the synthetic images that replace the others, class by class (first label group).

    Each class drops the first n images of a permutation seeded by (seed, class), so a larger percentage drops
    a superset of a smaller one's images, and takes its first n synthetic images (in the set's order).

    Raises:
        SettingError: a class has fewer synthetic images than it needs (names the class and both counts).
    """
    classes = real.schema.groups[0].classes
    counts = replacement_counts(real.class_counts(), percent)
    keep, take = [], []
    for c, n in enumerate(counts):
        r = np.flatnonzero(real.labels[:, 0] == c)
        s = np.flatnonzero(synthetic.labels[:, 0] == c)
        if n > len(s):
            raise SettingError(f"Replacing {percent} % of class {classes[c]!r} needs {n} synthetic images, but the "
                               f"synthetic set has {len(s)}; generate at least that many for the class.")
        order = np.random.default_rng(derive_seed(seed, "replace", c)).permutation(r)
        keep.append(order[n:])
        take.append(s[:n])
    return real.subset(np.sort(np.concatenate(keep))), synthetic.subset(np.concatenate(take))


def rarest_classes(counts: Sequence[int], k: int) -> list[int]:
    """Indices of the ``k`` classes with the fewest images (ties: the lower index first)."""
    return np.argsort(np.asarray(counts), kind="stable")[:k].tolist()


def with_mixing(cfg: TrainConfig, mixing: str) -> TrainConfig:
    """``cfg`` with another batch composition (``train.mixing``), validated again."""
    return TrainConfig(**{**cfg.model_dump(), "mixing": mixing})


def train_and_test(train: LabeledImages, synthetic: LabeledImages | None, cfg: TrainConfig, folder: str | Path, *,
                   test: LabeledImages, train_counts: Sequence[np.ndarray], thresholds: ShotThresholds,
                   val: LabeledImages | None = None, device: torch.device | str = "cpu", seed: int = 0,
                   progress: bool = False) -> dict:
    """Trains a classifier on ``train`` (+ ``synthetic`` under ``cfg.mixing``) and tests it on real ``test`` images.

    Args:
        train_counts: per label group, the real training count of every class (defines many/medium/few).

    Returns:
        The metrics of :func:`classification_metrics`, also saved as ``folder/metrics.json`` and ``per_class.csv``.
    """
    from synthaug.train import predict, train_classifier

    folder = Path(folder)
    model = train_classifier(train, synthetic, cfg, folder, val=val, device=device, seed=seed, progress=progress)
    size = read_json(folder / "model" / "classifier.json")["image_size"]
    logits = predict(model, test, size, device=torch.device(device))
    metrics = classification_metrics(logits, test.labels, test.schema, train_counts, thresholds)
    save_metrics(metrics, folder)
    return metrics


def classification_accuracy_score(synthetic: LabeledImages, cfg: TrainConfig, folder: str | Path, *,
                                  test: LabeledImages, train_counts: Sequence[np.ndarray],
                                  thresholds: ShotThresholds, device: torch.device | str = "cpu", seed: int = 0,
                                  progress: bool = False) -> dict:
    """CAS: a classifier trained on ``synthetic`` alone (real-only mixing over it), tested on real ``test`` images.

    Returns:
        The test metrics plus ``"trained_classes"``: the classes the synthetic set has images of (a class
        without any can only be guessed wrong, so its CAS is 0).
    """
    if not len(synthetic):
        raise SettingError("CAS needs synthetic images; the synthetic set is empty.")
    metrics = train_and_test(synthetic, None, with_mixing(cfg, "real-only"), folder, test=test,
                             train_counts=train_counts, thresholds=thresholds, device=device, seed=seed,
                             progress=progress)
    classes = synthetic.schema.groups[0].classes
    metrics["trained_classes"] = [classes[c] for c in np.unique(synthetic.labels[:, 0])]
    save_metrics(metrics, folder)
    return metrics


def linear_probe(x: torch.Tensor, y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray, num_classes: int, *,
                 epochs: int, lr: float, seed: int) -> float:
    """Best validation accuracy across epochs of a linear layer on frozen features (full-batch Adam; features
    standardised with the training rows' mean and std)."""
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x, val_x = (x - mean) / std, (val_x - mean) / std
    target, val_target = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(val_y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    best = 0.0
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x), target).backward()
        optimizer.step()
        with torch.no_grad():
            best = max(best, float((head(val_x).argmax(1) == val_target).float().mean()))
    return best


def few_shot(train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray, num_classes: int, *,
             shots: Sequence[int], trials: int, epochs: int, lr: float, seed: int,
             synth_x: torch.Tensor | None = None, synth_y: np.ndarray | None = None,
             synthetic_per_real: int = 10) -> list[dict]:
    """The few-shot protocol (after DA-Fusion): per k in ``shots`` and trial, k real training rows per class (all
    of a class with fewer), a linear probe's best validation accuracy; with synthetic rows too when given
    (``synthetic_per_real`` per chosen real row of the class, as many as the class has). The two conditions of
    a trial share its real rows.

    Returns:
        Rows ``{"shots", "synthetic", "mean", "std", "trials": [accuracy per trial], "real", "synthetic_rows"}``.
    """
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    conditions = [False] + ([True] if synth_x is not None and len(synth_x) else [])
    rows = []
    for k in shots:
        results = {c: [] for c in conditions}
        n_real, n_synth = 0, 0
        for t in range(trials):
            rng = np.random.default_rng(derive_seed(seed, "few-shot", k, t))
            chosen = np.concatenate([rng.choice(idx, min(k, len(idx)), replace=False)
                                     for c in range(num_classes) if len(idx := np.flatnonzero(train_y == c))])
            for with_synthetic in conditions:
                x, y = train_x[chosen], train_y[chosen]
                if with_synthetic:
                    extra = []
                    for c in np.unique(y):
                        pool = np.flatnonzero(np.asarray(synth_y) == c)
                        want = min(len(pool), synthetic_per_real * int((y == c).sum()))
                        extra.append(rng.choice(pool, want, replace=False) if want else np.zeros(0, dtype=np.int64))
                    extra = np.concatenate(extra).astype(np.int64)
                    x, y = torch.cat([x, synth_x[extra]]), np.concatenate([y, np.asarray(synth_y)[extra]])
                    n_synth = len(extra)
                n_real = len(chosen)
                results[with_synthetic].append(linear_probe(x, y, val_x, val_y, num_classes, epochs=epochs, lr=lr,
                                                            seed=derive_seed(seed, "probe", k, t)))
        for with_synthetic, accs in results.items():
            rows.append({"shots": k, "synthetic": with_synthetic, "mean": float(np.mean(accs)),
                         "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, "trials": accs,
                         "real": n_real, "synthetic_rows": n_synth if with_synthetic else 0})
    return rows
