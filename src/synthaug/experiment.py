"""The experiment runner: data → generator → synthetic set (+ pseudo-labelled control) → classifier arms →
report, each stage in ``runs/<name>/<stage>/`` with a ``done.json`` record.

A finished stage is skipped on re-run; an interrupted one resumes (generator checkpoints, store resume,
per-epoch classifier checkpoints). A finished stage whose inputs changed (config fingerprint) is an error
rather than a silent reuse.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from synthaug.config import ArmConfig, ExperimentConfig, dump_config, fingerprint
from synthaug.data import ClassStats, DataSplits, ShotThresholds, load_source, longtail_subsample
from synthaug.evaluate.metrics import classification_metrics, save_metrics
from synthaug.generators import Generator, create_generator, fill_store
from synthaug.plan import (
    PlanItem, balance_counts, fixed_counts, make_items, ratio_counts, rare_attribute_items, unconditional_items,
)
from synthaug.store import SyntheticStore
from synthaug.train import TrainConfig, load_classifier, predict, train_classifier
from synthaug.utils import read_json, resolve_device, write_json
from synthaug.errors import SettingError, StageMismatch  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class Experiment:
    """Runs (or resumes) one experiment config. Each public method is one stage and returns its result."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.device = resolve_device(cfg.device)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(dump_config(cfg))

    # ------------------------------------------------------------------------------------------ bookkeeping
    @contextmanager
    def _stage(self, rel: str, fp: str) -> Iterator[dict | None]:
        """Yields None when ``rel`` is already done with fingerprint ``fp``; else a dict to fill with a summary."""
        folder = self.dir / rel
        record = folder / "done.json"
        if record.is_file():
            done = read_json(record)
            if done.get("fingerprint") == fp:
                yield None
                return
            raise StageMismatch(
                f"Stage {rel} in {folder} was completed with another configuration. Delete {folder} to redo it "
                f"(and the stages after it), or use a new experiment name (--set name=...).")
        folder.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {}
        start = time.time()
        yield summary
        write_json(record, {"fingerprint": fp, "seconds": round(time.time() - start, 1),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})

    def _done(self, rel: str) -> dict:
        return read_json(self.dir / rel / "done.json")

    # ------------------------------------------------------------------------------------------ data
    @cached_property
    def data_fp(self) -> str:
        return fingerprint("data", self.cfg.data.model_dump(), self.cfg.seed)

    @cached_property
    def splits(self) -> DataSplits:
        """The train/val/test splits, the training split long-tailed if configured."""
        d = self.cfg.data
        splits = load_source(d.source, **d.loader_options())
        self.balanced_pool = splits.train
        if d.longtail is not None:
            splits.train = longtail_subsample(splits.train, imbalance_ratio=d.longtail.imbalance_ratio,
                                              seed=self.cfg.seed, class_order=d.longtail.class_order,
                                              n_max=d.longtail.n_max)
        return splits

    @property
    def thresholds(self) -> ShotThresholds:
        return ShotThresholds(self.cfg.data.shots.many, self.cfg.data.shots.few)

    @cached_property
    def train_counts(self) -> list[np.ndarray]:
        t = self.splits.train
        return [np.bincount(t.labels[:, g], minlength=n) for g, n in enumerate(t.schema.group_sizes)]

    def stats(self) -> ClassStats:
        """Stage ``data``: class statistics of the training split, as text, JSON and a bar chart."""
        stats = ClassStats.from_labels(self.splits.schema, self.splits.train.labels, self.thresholds)
        with self._stage("data", self.data_fp) as summary:
            if summary is not None:
                folder = self.dir / "data"
                write_json(folder / "stats.json", stats.to_dict())
                (folder / "stats.txt").write_text(stats.format() + "\n")
                stats.bar_chart(folder / "class_counts.png")
                write_json(folder / "splits.json", {k: getattr(self.splits, k).ids for k in ("train", "val", "test")})
                summary.update(train=len(self.splits.train), val=len(self.splits.val), test=len(self.splits.test),
                               skipped=self.splits.train.skipped)
        return stats

    # ------------------------------------------------------------------------------------------ generator
    @cached_property
    def generator_fp(self) -> str:
        return fingerprint(self.data_fp, self.cfg.generator.model_dump())

    @cached_property
    def generator(self) -> Generator:
        g = self.cfg.generator
        return create_generator(g.name, g.params, self.splits.schema, device=self.device,
                                workdir=self.dir / "generator", seed=self.cfg.seed)

    def fit_generator(self) -> Generator:
        """Stage ``generator``: trains / fine-tunes the generator (resumes from its checkpoints)."""
        self.stats()
        with self._stage("generator", self.generator_fp) as summary:
            if summary is not None:
                self.generator.fit(self.splits.train)
                summary["generator"] = self.cfg.generator.name
        return self.generator

    # ------------------------------------------------------------------------------------------ synthetic sets
    def plan_items(self) -> list[PlanItem]:
        """The generation plan: per-class counts for single-label data, or (``plan.strategy:
        rare-attributes``, required for several label groups) copies of training images with rare classes."""
        p, schema, train = self.cfg.plan, self.splits.schema, self.splits.train
        if p.strategy == "rare-attributes":
            return rare_attribute_items(schema, train.labels, train.ids, seed=self.cfg.seed,
                                        thresholds=self.thresholds, rare_shots=p.rare_shots, per_source=p.per_source,
                                        total=p.total, template=p.caption_template)
        return make_items(schema, self.plan_counts(), seed=self.cfg.seed)

    def plan_counts(self) -> np.ndarray:
        """Planned images per class of the first label group."""
        p, schema = self.cfg.plan, self.splits.schema
        if p.strategy == "rare-attributes":
            first = [it.labels[0] for it in self.plan_items()]
            return np.bincount(np.asarray(first, dtype=np.int64), minlength=schema.group_sizes[0])
        real = self.train_counts[0]
        if not schema.is_single_label:
            raise SettingError(f"plan.strategy {p.strategy!r} plans per-class counts of single-label data, but this "
                             f"data has {len(schema.groups)} label groups; use plan.strategy: rare-attributes.")
        if p.strategy == "balance":
            return balance_counts(real, p.target)
        if p.strategy == "ratio":
            return ratio_counts(real, p.ratio)
        group = schema.groups[0]
        return fixed_counts(len(group.classes), {group.index(str(k)): v for k, v in p.counts.items()})

    def synthetic(self) -> SyntheticStore:
        """Stage ``synthetic``: generates the planned images into the store (resumes after a crash)."""
        generator = self.fit_generator()
        fp = fingerprint(self.generator_fp, self.cfg.plan.model_dump(exclude={"batch_size"}))
        store = SyntheticStore(self.dir / "synthetic", self.splits.schema)
        with self._stage("synthetic", fp) as summary:
            if summary is not None:
                items = self.plan_items()
                made = fill_store(generator, items, store, batch_size=self.cfg.plan.batch_size,
                                  progress=self.cfg.progress)
                summary.update(planned=len(items), generated_now=made)
                self._sample_grid(store, self.dir / "synthetic" / "samples.png")
        return store

    def pseudo(self) -> SyntheticStore:
        """Stage ``pseudo``: the control set — unconditional samples labelled by a real-only classifier."""
        planned = int(self.plan_counts().sum())
        count = self.cfg.pseudo.count or planned
        arm = self.cfg.arm(self.cfg.pseudo.classifier_arm)
        classifier_dir = self.dir / self.train_arm(arm, self.cfg.seeds[0])["folder"] / "model"
        self.fit_generator()
        fp = fingerprint(self.generator_fp, count, self._arm_fp(arm, self.cfg.seeds[0]))
        store = SyntheticStore(self.dir / "pseudo", self.splits.schema)
        with self._stage("pseudo", fp) as summary:
            if summary is not None:
                g = self.cfg.generator
                labeller = create_generator(
                    "pseudo-label", {"classifier": str(classifier_dir), "base": g.name, "base_params": g.params,
                                     "base_workdir": str(self.dir / "generator")},
                    self.splits.schema, device=self.device, workdir=self.dir / "pseudo", seed=self.cfg.seed)
                items = unconditional_items(count, seed=self.cfg.seed)
                made = fill_store(labeller, items, store, batch_size=self.cfg.plan.batch_size,
                                  progress=self.cfg.progress)
                labels = np.asarray([r["label_ids"][0] for r in store.records()])
                summary.update(planned=count, generated_now=made,
                               label_counts=np.bincount(labels, minlength=len(self.splits.schema.groups[0].classes)).tolist())
        return store

    def _sample_grid(self, store: SyntheticStore, path: Path, per_class: int = 8) -> None:
        from synthaug.imaging import image_grid

        images = store.load(mode=self.splits.train.mode)
        rows = []
        for c in range(len(images.schema.groups[0].classes)):
            idx = np.flatnonzero(images.labels[:, 0] == c)[:per_class]
            if len(idx):
                rows.append([images.image(i) for i in idx] + [None] * (per_class - len(idx)))
        if not rows:
            return
        blank = rows[0][0].copy()
        blank.paste(0, (0, 0, *blank.size))
        flat = [im if im is not None else blank for row in rows for im in row]
        image_grid(flat, len(rows), per_class).save(path)

    # ------------------------------------------------------------------------------------------ classifiers
    def _arm_fp(self, arm: ArmConfig, seed: int) -> str:
        return fingerprint(self.data_fp, arm.model_dump(), self.cfg.arm_train(arm).model_dump(), seed,
                           self.generator_fp if arm.synthetic != "none" else None,
                           self.cfg.plan.model_dump(exclude={"batch_size"}) if arm.synthetic != "none" else None,
                           self.cfg.pseudo.model_dump() if arm.synthetic == "pseudo" else None)

    def train_arm(self, arm: ArmConfig, seed: int) -> dict:
        """Stage ``train/<arm>/seed<k>``: trains one classifier and evaluates it on the test split."""
        rel = f"train/{arm.name}/seed{seed}"
        synthetic = None
        if arm.synthetic == "generated":
            synthetic = self.synthetic().load(mode=self.splits.train.mode)
        elif arm.synthetic == "pseudo":
            synthetic = self.pseudo().load(mode=self.splits.train.mode)
        self.stats()
        with self._stage(rel, self._arm_fp(arm, seed)) as summary:
            if summary is not None:
                tcfg = self.cfg.arm_train(arm)
                folder = self.dir / rel
                write_json(folder / "train_config.json", tcfg.model_dump(mode="json"))
                model = train_classifier(self.splits.train, synthetic, tcfg, folder, val=self.splits.val,
                                         device=self.device, seed=seed, progress=self.cfg.progress)
                metrics = self._evaluate(model, folder)
                summary.update(folder=rel, accuracy=metrics["accuracy"],
                               synthetic=0 if synthetic is None else len(synthetic))
        return self._done(rel)

    def _evaluate(self, model, folder: Path) -> dict:
        meta_size = read_json(folder / "model" / "classifier.json")["image_size"]
        logits = predict(model, self.splits.test, meta_size, device=self.device)
        metrics = classification_metrics(logits, self.splits.test.labels, self.splits.schema, self.train_counts,
                                         self.thresholds)
        save_metrics(metrics, folder)
        return metrics

    def evaluate(self) -> None:
        """Re-evaluates every trained classifier on the test split (metrics.json, per_class.csv)."""
        for arm in self.cfg.arms:
            for seed in self.cfg.seeds:
                folder = self.dir / "train" / arm.name / f"seed{seed}"
                if (folder / "model" / "classifier.json").is_file():
                    model, _ = load_classifier(folder / "model", self.device)
                    self._evaluate(model, folder)

    # ------------------------------------------------------------------------------------------ judge
    def judge(self) -> dict | None:
        """Stage ``judge``: how many synthetic images a classifier trained on the balanced real pool
        recognises as their intended class (per class), i.e. whether the generator gets the labels right."""
        if not self.cfg.judge.enabled or not any(a.synthetic == "generated" for a in self.cfg.arms):
            return None
        store = self.synthetic()
        fp = fingerprint(self.generator_fp, self.cfg.plan.model_dump(exclude={"batch_size"}),
                         self.cfg.judge.model_dump(), self.cfg.train.model_dump())
        with self._stage("judge", fp) as summary:
            if summary is not None:
                cfg = TrainConfig(**{**self.cfg.train.model_dump(), "epochs": self.cfg.judge.epochs,
                                     "loss": "ce", "mixing": "real-only"})
                model = train_classifier(self.balanced_pool, None, cfg, self.dir / "judge", device=self.device,
                                         seed=self.cfg.seed, progress=self.cfg.progress)
                synth = store.load(mode=self.splits.train.mode)
                size = read_json(self.dir / "judge" / "model" / "classifier.json")["image_size"]
                pred = predict(model, synth, size, device=self.device).argmax(1).numpy()
                real_acc = (predict(model, self.splits.test, size, device=self.device).argmax(1).numpy()
                            == self.splits.test.labels[:, 0]).mean()
                classes = self.splits.schema.groups[0].classes
                per_class = {}
                for c, name in enumerate(classes):
                    mask = synth.labels[:, 0] == c
                    if mask.any():
                        per_class[name] = float((pred[mask] == c).mean())
                summary.update(synthetic_label_accuracy=per_class, judge_test_accuracy=float(real_acc),
                               overall=float((pred == synth.labels[:, 0]).mean()) if len(synth) else None)
        return self._done("judge")

    # ------------------------------------------------------------------------------------------ all
    def run(self, *, only: Callable[[ArmConfig], bool] | None = None) -> dict:
        """Every stage in order; returns the report (see :mod:`synthaug.report.tables`)."""
        from synthaug.report.tables import build_report

        self.stats()
        for arm in self.cfg.arms:
            if only is None or only(arm):
                for seed in self.cfg.seeds:
                    self.train_arm(arm, seed)
        judge = self.judge()
        return build_report(self.dir)
