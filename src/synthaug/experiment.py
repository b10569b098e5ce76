"""The experiment runner: data → generator → synthetic set (+ pseudo-labelled control) → classifier arms →
report, each stage in ``runs/<name>/<stage>/`` with a ``done.json`` record.

A finished stage is skipped on re-run; an interrupted one resumes (generator checkpoints, store resume,
per-epoch classifier checkpoints). Each stage's fingerprint covers exactly what it depends on, in named
parts (see :meth:`Experiment._stage`):

- ``data``: the data fields and the resolved data (image ids, labels, file sizes and mtimes), not ``shots``;
- ``generator``: the data and the generator's *training* fields (``GeneratorConfig.training_part``);
- ``synthetic``: the trained model and the *sampling* fields; the plan is recorded beside it, so a plan that
  grows reuses every image already made;
- ``filter``: the generated set and every filter's config (thresholds included); each filter's scores are
  cached in ``filter-scores/<name>`` (redone only when what they depend on changes), see :mod:`synthaug.filters`;
- ``train/<arm>/seed<k>``: the data, the arm's training fields (not ``num_workers``), the seed, and the
  synthetic set it trains on (the filter stage's inputs for a filtered arm).

Derived data (``data``, ``synthetic``, ``pseudo``, ``judge``) is redone when its inputs change, the old folder
kept aside as ``<stage>.stale-<fingerprint>``; a trained generator or classifier whose inputs changed is an
error naming what changed, never a silent reuse or a silent retrain. Performance knobs (workers, batch sizes
of sampling, ``progress``) are in no fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from synthaug.config import ArmConfig, ExperimentConfig, dump_config, fingerprint
from synthaug.data import ClassStats, DataSplits, ShotThresholds, load_source
from synthaug.evaluate.metrics import classification_metrics, save_metrics
from synthaug.data.attributes import read_class_names
from synthaug.data.longtail import (
    SplitsWithoutValidation, apply_longtail_profile, carve_validation, fewshot_subsample,
)
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.generators import GENERATORS, Generator, create_generator, fill_store, generator_config
from synthaug.runlock import RunLock
from synthaug.plan import (
    PlanItem, balance_counts, check_plan_size, fixed_counts, make_items, overgenerate_counts, ratio_counts, rare_attribute_items,
    take_per_class, unconditional_items,
)
from synthaug.store import SyntheticStore
from synthaug.train import TrainConfig, load_classifier, predict, train_classifier
from synthaug.train.checkpoint import remove as remove_checkpoint
from synthaug.train.config import PERFORMANCE  # noqa: F401  (re-exported: training fields in no fingerprint)
from synthaug.train.distributed import Processes
from synthaug.torch_utils import resolve_device
from synthaug.utils import read_json, write_json
from synthaug.errors import SettingError, StageMismatch  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def _content_hash(splits: DataSplits) -> str:
    """The fingerprint of every image id and label of every split, and of each image file's size and
    modification time (a file replaced under the same name is a changed dataset)."""
    content = hashlib.sha256()
    for split in ("train", "val", "test"):
        images = getattr(splits, split)
        content.update(f"{split}:{len(images)}\n".encode())
        files = images.paths or [None] * len(images)
        for image_id, label, path in zip(images.ids, images.labels.tolist(), files):
            st = None if path is None else path.stat()
            stamp = "" if st is None else f"\t{st.st_size}\t{st.st_mtime_ns}"
            content.update(f"{image_id}\t{label}{stamp}\n".encode())
    return content.hexdigest()


def _concatenate(parts: list[LabeledImages]) -> LabeledImages:
    """One set of the images of ``parts`` (subsets of one loaded source), in order."""
    def joined(field):
        values = [getattr(p, field) for p in parts]
        if values[0] is None:
            return None
        return np.concatenate(values) if isinstance(values[0], np.ndarray) else [v for vs in values for v in vs]

    first = parts[0]
    return LabeledImages(first.schema, np.concatenate([p.labels for p in parts]), joined("ids"),
                         pixels=joined("pixels"), paths=joined("paths"), mode=first.mode, origin=first.origin,
                         captions=joined("captions"))


class Experiment:
    """Runs (or resumes) one experiment config. Each public method is one stage and returns its result."""

    def __init__(self, cfg: ExperimentConfig, *, lock: RunLock | None = None):
        """``lock``: the run folder's write lock (see :mod:`synthaug.runlock`), taken by the main process before
        its first write (the command line passes one; from Python, pass one or keep to one writer yourself)."""
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.lock = lock
        self.device = resolve_device(cfg.device)
        # under `accelerate launch`: generation and classifier training are shared; only the main process writes
        self.processes = Processes.launched(self.device)
        self.device = self.processes.device(self.device)
        self._config_written = False
        self._synthetic_images: dict[bool, LabeledImages] = {}

    @property
    def is_main(self) -> bool:
        return self.processes.is_main

    def _wait_for_everyone(self) -> None:
        self.processes.barrier()

    def hold_lock(self) -> None:
        """Takes the run folder's write lock, if this experiment has one, on the main process (the ranks of one
        ``accelerate launch`` write as one: rank 0 alone writes records). Called before anything is written."""
        if self.lock is not None and self.processes.is_main:
            self.lock.acquire()

    # ------------------------------------------------------------------------------------------ bookkeeping
    def _accept_config(self) -> None:
        """Writes ``config.yaml`` once a stage of this run is accepted (a rejected re-run leaves it alone)."""
        if not self._config_written and self.processes.is_main:
            self.hold_lock()
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(dump_config(self.cfg))
            (self.dir / "config.resolved.yaml").write_text(dump_config(self.cfg, resolved=True))
            self._config_written = True

    @staticmethod
    def _changed(previous: dict, part_fps: dict[str, str]) -> list[str]:
        return [k for k, v in part_fps.items() if previous.get("parts", {}).get(k) != v] or ["its inputs"]

    def _check(self, rel: str, parts: dict[str, Any], *, redo: bool = False, restartable: bool = False) -> dict | None:
        """The stage's previous record (done or started), or None; a :class:`StageMismatch` when it was made
        with other inputs and may not be redone. Called before anything of a run is written.

        ``restartable``: the stage keeps nothing a rerun resumes from (a generator that trains nothing), so a
        ``started`` record without ``done`` is no record at all (an attempt that failed before this fix left one)."""
        folder = self.dir / rel
        record, started = folder / "done.json", folder / "started.json"
        previous = read_json(record) if record.is_file() else read_json(started) if started.is_file() else None
        if previous is not None and restartable and not record.is_file():
            previous = None
        if previous is None or redo or previous.get("fingerprint") == fingerprint(parts):
            return previous
        changed = self._changed(previous, {k: fingerprint(v) for k, v in parts.items()})
        state = "completed" if record.is_file() else "started"
        raise StageMismatch(
            f"Stage {rel} in {folder} was {state} with other inputs ({', '.join(changed)} changed). Delete "
            f"{folder} to redo it (and the stages after it), or use a new experiment name (--set name=...).")

    def _conflict(self, rel: str, parts: dict[str, Any], *, restartable: bool = False) -> str | None:
        """How stage ``rel`` on disk conflicts with ``parts`` (made with other inputs, and not redone on its own
        as derived data is), or None."""
        try:
            self._check(rel, parts, restartable=restartable)
        except StageMismatch:
            folder = self.dir / rel
            previous = read_json(folder / "done.json") if (folder / "done.json").is_file() \
                else read_json(folder / "started.json")
            state = "completed" if (folder / "done.json").is_file() else "started"
            changed = self._changed(previous, {k: fingerprint(v) for k, v in parts.items()})
            return f"{rel} ({state} with other inputs: {', '.join(changed)} changed): {folder}"
        return None

    def preflight(self, arms: list[ArmConfig] | None = None, *, generator: bool | None = None) -> None:
        """Plan, then act: checks, before anything runs or is written, every stage the command would reuse that was
        made (or started) with other inputs: the generator and each classifier arm and seed (with the arm that
        labels the pseudo-labelled control). Derived data (data, synthetic, pseudo, filter, judge) is redone
        when its inputs change, so it conflicts only through what was trained on it.

        Args:
            arms: the arms the command trains (None: every arm); their seeds are ``seeds``.
            generator: whether the command uses the generator (None: when an arm uses synthetic images).

        Raises:
            StageMismatch: listing every conflicting stage, what changed, and the fix.
        """
        arms = self.cfg.arms if arms is None else arms
        if generator is None:
            generator = any(a.synthetic != "none" for a in arms)
        checks = []
        if generator:
            checks.append(("generator", lambda: self._generator_parts, self._generator_trains_nothing))
        trained = {(a.name, seed): a for a in arms for seed in self.cfg.seeds}
        if any(a.synthetic == "pseudo" for a in arms) and self.pseudo_control is not None:
            labeller = self.cfg.arm(self.cfg.pseudo.classifier_arm)
            trained = {(labeller.name, self.cfg.seeds[0]): labeller, **trained}
        for (name, seed), arm in trained.items():
            if arm.synthetic == "pseudo" and self.pseudo_control is None:
                continue  # left out of the run (its generator has no pseudo-labelled control)
            checks.append((f"train/{name}/seed{seed}", lambda a=arm, k=seed: self._arm_parts(a, k), False))
        conflicts = [c for rel, parts, restartable in checks if (self.dir / rel).is_dir()
                     and (c := self._conflict(rel, parts(), restartable=restartable))]
        if conflicts:
            listed = "\n".join(f"  - {c}" for c in conflicts)
            raise StageMismatch(
                f"This command would reuse or retrain finished work that was made with other inputs; nothing was run "
                f"or written. Conflicting stage(s):\n{listed}\nTo redo them with this config, delete those folders "
                f"(the stages after them are redone too), or keep them and use a new experiment name (--set "
                f"name=...); or undo the change.")

    @contextmanager
    def _stage(self, rel: str, parts: dict[str, Any], *, redo: bool = False, shared: bool = False,
               restartable: bool = False) -> Iterator[dict | None]:
        """Yields None when ``rel`` is done with the same inputs; else a dict to fill with the stage's summary.

        Args:
            parts: the stage's inputs by name (each JSON-able or a fingerprint); their hash is the stage's
                fingerprint, and the names let a mismatch say what changed.
            redo: for derived data: when the inputs changed, move the old folder aside and redo the stage.
                Otherwise a changed finished (or started) stage is a :class:`StageMismatch`.
            shared: under several processes every rank runs the stage's body (rank 0 prepares the folder
                first and records the stage after all are through); otherwise rank 0 alone runs it and the
                others are told it is done. Rank 0 alone writes records either way.
            restartable: the stage keeps nothing to resume from: a body that fails removes the ``started``
                record (and the folder, when this attempt made it), so the fixed rerun starts fresh.
        """
        if not self.is_main:
            if not shared:  # rank 0 runs the stage alone: wait until it is recorded
                self._wait_for_everyone()
                yield None
                return
            self._wait_for_everyone()  # rank 0 has prepared the folder (or found the stage done)
            record = self.dir / rel / "done.json"
            done = record.is_file() and read_json(record).get("fingerprint") == fingerprint(parts)
            yield None if done else {}
            self._wait_for_everyone()
            return
        with self._main_stage(rel, parts, redo=redo, shared=shared, restartable=restartable) as summary:
            yield summary
        if not shared:
            self._wait_for_everyone()  # the others wait for this record

    @contextmanager
    def _main_stage(self, rel: str, parts: dict[str, Any], *, redo: bool, shared: bool,
                    restartable: bool = False) -> Iterator[dict | None]:
        wait = self._wait_for_everyone if shared else (lambda: None)
        folder = self.dir / rel
        fp = fingerprint(parts)
        part_fps = {k: fingerprint(v) for k, v in parts.items()}
        record, started = folder / "done.json", folder / "started.json"
        for locked in (False, True):  # a done stage is read without the lock; else read again under it
            if locked:
                self.hold_lock()  # another writer may have made the stage meanwhile (under --wait)
            previous = self._check(rel, parts, redo=redo, restartable=restartable)
            if previous is not None and previous.get("fingerprint") == fp and record.is_file():
                wait()
                yield None
                wait()
                return
        if previous is not None and previous.get("fingerprint") != fp:
            changed = self._changed(previous, part_fps)
            aside = folder.with_name(f"{folder.name}.stale-{previous['fingerprint'][:8]}")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            log.warning("Stage %s: %s changed; redoing it (the previous result is kept in %s).",
                        rel, ", ".join(changed), aside)
        self._accept_config()
        made_now = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(started, {"fingerprint": fp, "parts": part_fps})
        summary: dict[str, Any] = {}
        start = time.time()
        wait()
        try:
            yield summary
        except BaseException:
            if restartable:  # nothing to resume: the fixed rerun finds the stage fresh
                if made_now:
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    started.unlink(missing_ok=True)
            raise
        wait()
        write_json(record, {"fingerprint": fp, "parts": part_fps, "seconds": round(time.time() - start, 1),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})

    def _done(self, rel: str) -> dict:
        return read_json(self.dir / rel / "done.json")

    # ------------------------------------------------------------------------------------------ data
    @cached_property
    def data_fp(self) -> str:
        """The data fields (not the reporting thresholds), the seed, and the resolved data itself: every
        image id and label of every split, and each image file's size and modification time (no content
        hashing), so a relabelled manifest or a replaced image is a changed dataset."""
        return fingerprint(self._data_parts)

    @cached_property
    def _data_parts(self) -> dict[str, Any]:
        return {"data": self.cfg.data.fingerprint_part(), "seed": self.cfg.seed,
                "content": _content_hash(self.splits)}

    @cached_property
    def splits(self) -> DataSplits:
        """The train/val/test splits, the training split long-tailed if configured: read back from
        ``data/splits.json`` when the data stage is done with the same data settings and the images listed there
        are unchanged (no image is decoded again to check it), else loaded and checked."""
        return self._recorded_splits() or self._load_splits()

    def _load_splits(self) -> DataSplits:
        d = self.cfg.data
        splits = load_source(d.source, **d.loader_options())
        self._balanced_pool = full = splits.train
        if d.longtail is not None:
            lt = d.longtail
            splits.train = apply_longtail_profile(full, profile=lt.profile, imbalance_ratio=lt.imbalance_ratio,
                                                  seed=self.cfg.seed, class_order=lt.class_order, n_max=lt.n_max)
        if isinstance(splits, SplitsWithoutValidation):  # validation from the training images not kept
            train, val, self._balanced_pool = carve_validation(
                full, splits.train if d.longtail is not None else None, per_class=splits.val_per_class,
                seed=splits.split_seed)
            splits = DataSplits(train, val, splits.test)
        if d.fewshot is not None:
            splits.train = fewshot_subsample(splits.train, shots=d.fewshot.shots, draw=d.fewshot.draw)
        return splits

    def _recorded_splits(self) -> DataSplits | None:
        """The splits of ``data/splits.json`` from the source listed without image checks; None when the data
        stage is not done, was done with other data settings, or the listing no longer has those images and
        labels (then the caller loads and checks again)."""
        folder = self.dir / "data"
        if not ((folder / "done.json").is_file() and (folder / "splits.json").is_file()):
            return None
        record, recorded = read_json(folder / "done.json"), read_json(folder / "splits.json")
        same = {"data": self.cfg.data.fingerprint_part(), "seed": self.cfg.seed}
        if any(record.get("parts", {}).get(k) != fingerprint(v) for k, v in same.items()):
            return None
        from synthaug.data.sources import images_checked_before

        with images_checked_before():
            listed = load_source(self.cfg.data.source, **self.cfg.data.loader_options())
        # a split carved again without the skipped images may differ: take each recorded id from the whole listing
        everything = _concatenate([listed.train, listed.val, listed.test])
        index = {image_id: i for i, image_id in enumerate(everything.ids)}
        if any(image_id not in index for split in ("train", "val", "test") for image_id in recorded[split]):
            return None
        splits = DataSplits(**{split: everything.subset([index[image_id] for image_id in recorded[split]])
                               for split in ("train", "val", "test")})
        if fingerprint(_content_hash(splits)) != record["parts"].get("content"):
            return None
        splits.train.skipped = list(record.get("skipped") or [])
        log.info("Data splits read back from %s (images checked when they were recorded).", folder / "splits.json")
        return splits

    @property
    def balanced_pool(self) -> LabeledImages:
        """The training split before long-tailing (checked: loaded again when the splits were read back)."""
        self.splits  # noqa: B018
        if not hasattr(self, "_balanced_pool"):
            self._load_splits()
        return self._balanced_pool

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
        folder = self.dir / "data"
        with self._stage("data", self._data_parts, redo=True) as summary:
            if summary is not None and self.processes.is_main:
                write_json(folder / "splits.json", {k: getattr(self.splits, k).ids for k in ("train", "val", "test")})
                summary.update(train=len(self.splits.train), val=len(self.splits.val), test=len(self.splits.test),
                               skipped=self.splits.train.skipped)
        # statistics depend on the reporting thresholds too, which invalidate nothing: rewrite when they differ
        if self.processes.is_main and (not (folder / "stats.json").is_file()
                                       or read_json(folder / "stats.json") != stats.to_dict()):
            self.hold_lock()
            write_json(folder / "stats.json", stats.to_dict())
            (folder / "stats.txt").write_text(stats.format() + "\n")
            stats.bar_chart(folder / "class_counts.png")
        return stats

    def model_inputs(self) -> tuple[LabelSchema, int, int | None]:
        """(label schema, image channels, image size or None) for building classifiers: from the classes the
        config declares when it does (no data needed), else from the data."""
        d = self.cfg.data
        classes = d.classes
        if classes is None and d.classes_file:
            classes = read_class_names(d.classes_file)
        if classes is None:
            from synthaug.train.loop import image_size_of

            train = self.splits.train
            return train.schema, train.channels, image_size_of(train)
        if isinstance(classes, list):
            classes = {d.label_columns[0] if d.source == "manifest" else "label": classes}
        return LabelSchema.from_dict(classes), 1 if d.mode == "L" else 3, None

    # ------------------------------------------------------------------------------------------ generator
    @cached_property
    def generator_config(self):
        g = self.cfg.generator
        return generator_config(g.name, g.params)

    @cached_property
    def _generator_parts(self) -> dict[str, Any]:
        return {"data": self.data_fp, "generator": [self.cfg.generator.name, self.generator_config.training_part()]}

    @property
    def _generator_trains_nothing(self) -> bool:
        """The generators that train (ddpm, mvc, sd-finetune) are the ones that train data-parallel and resume
        from checkpoints; any other only loads a pretrained model (or records real images) in ``fit``."""
        return not GENERATORS.get(self.cfg.generator.name).distributed_fit

    @cached_property
    def generator_fp(self) -> str:
        return fingerprint(self._generator_parts)

    @cached_property
    def generator(self) -> Generator:
        generator = create_generator(self.cfg.generator.name, self.generator_config, self.splits.schema,
                                     device=self.device, workdir=self.dir / "generator", seed=self.cfg.seed,
                                     progress=self.cfg.progress)
        generator.use_real(self.splits.train)  # sampling may start from real images (ddpm's translate_from)
        return generator

    def fit_generator(self) -> Generator:
        """Stage ``generator``: trains / fine-tunes the generator (resumes from its checkpoints), then checks
        that the model it will sample from loads; only then is the stage recorded done."""
        self.plan_items()  # a plan that cannot work (an unknown class, ...) fails before any training
        # a generator that trains nothing (a pretrained pipeline) keeps nothing to resume: a failed load leaves
        # the stage fresh, so the rerun with the right model path is not refused as "started with other inputs"
        restartable = self._generator_trains_nothing
        self._check("generator", self._generator_parts, restartable=restartable)  # before this run writes anything
        self.stats()
        # under `accelerate launch` a generator that trains data-parallel fits on every process (rank 0 alone
        # writes the model and the record); any other fits on rank 0 while the others wait
        with self._stage("generator", self._generator_parts, shared=self.generator.distributed_fit,
                         restartable=restartable) as summary:
            if summary is not None:
                self.generator.fit(self.splits.train)
                self.generator.check_loadable()
                summary["generator"] = self.cfg.generator.name
        if not self.is_main:  # the other ranks sample from the model rank 0 trained (and recorded)
            self.generator.check_loadable()
        return self.generator

    # ------------------------------------------------------------------------------------------ synthetic sets
    def plan_items(self) -> list[PlanItem]:
        """The generation plan (computed once per run)."""
        if not hasattr(self, "_plan_items"):
            self._plan_items = self._make_plan_items()
        return self._plan_items

    def _make_plan_items(self) -> list[PlanItem]:
        """The generation plan: per-class counts for single-label data, or (``plan.strategy:
        rare-attributes``, required for several label groups) copies of training images with rare classes."""
        p, schema, train = self.cfg.plan, self.splits.schema, self.splits.train
        if p.strategy == "rare-attributes":
            return rare_attribute_items(schema, train.labels, train.ids, seed=self.cfg.seed,
                                        thresholds=self.thresholds, rare_shots=p.rare_shots, per_source=p.per_source,
                                        total=p.total, template=p.caption_template)
        counts = overgenerate_counts(self.plan_counts(), p.overgenerate)
        setting = {"balance": "plan.target", "fixed": "plan.counts", "ratio": "plan.ratio"}[p.strategy]
        # refused with its size before one item is built (an extra zero would build ~220 bytes per item)
        check_plan_size(float(counts.sum()), setting=setting + (" or plan.overgenerate" if p.overgenerate != 1 else ""),
                        n_train=len(train))
        return make_items(schema, counts, seed=self.cfg.seed)

    def plan_counts(self) -> np.ndarray:
        """Planned images per class of the first label group (the target: before ``plan.overgenerate``)."""
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
        unknown = [str(k) for k in p.counts if str(k) not in group.classes]
        if unknown:
            raise SettingError(f"plan.counts names class(es) {unknown} that the data does not have; its classes are "
                               f"{list(group.classes)[:20]}{' ...' if len(group.classes) > 20 else ''}. Fix the names.")
        return fixed_counts(len(group.classes), {group.index(str(k)): v for k, v in p.counts.items()})

    @cached_property
    def _synthetic_parts(self) -> dict[str, Any]:
        return {"generator": self.generator_fp, "sampling": self.generator_config.sampling_part()}

    @cached_property
    def plan_fp(self) -> str:
        return fingerprint([it.to_dict() for it in self.plan_items()])

    @cached_property
    def generated_fp(self) -> str:
        """The whole generated set: the model, the sampling and the plan (over-generated items included)."""
        return fingerprint(self._synthetic_parts, self.plan_fp)

    def target_items(self) -> list[PlanItem]:
        """The items an unfiltered arm uses: the first ``plan_counts()`` items of each class in plan order (the
        whole plan unless ``plan.overgenerate`` > 1; then the items a plan without it would have)."""
        items = self.plan_items()
        if self.cfg.plan.overgenerate == 1:
            return items
        taken = take_per_class([it.labels[0] for it in items], np.ones(len(items), bool), self.plan_counts())
        return [it for it, t in zip(items, taken) if t]

    @cached_property
    def synthetic_set_fp(self) -> str:
        """What an arm trained on the unfiltered set depends on: the model, the sampling and its items."""
        if self.cfg.plan.overgenerate == 1:
            return self.generated_fp
        return fingerprint(self._synthetic_parts, fingerprint([it.to_dict() for it in self.target_items()]))

    def synthetic(self) -> SyntheticStore:
        """Stage ``synthetic``: generates the planned images into the store (resumes after a crash).

        Changed sampling settings regenerate the set (the model is kept; the old set is kept aside). A plan
        that grew (or changed) reuses every image already made for an unchanged item.
        """
        if hasattr(self, "_synthetic_store"):
            return self._synthetic_store
        generator = self.fit_generator()
        folder = self.dir / "synthetic"
        record = folder / "done.json"
        if self.is_main and record.is_file() \
                and read_json(record).get("fingerprint") == fingerprint(self._synthetic_parts) \
                and read_json(record).get("plan") != self.plan_fp:
            log.info("The generation plan changed; generating the new items into %s.", folder)
            self.hold_lock()
            record.unlink()
        with self._stage("synthetic", self._synthetic_parts, redo=True, shared=True) as summary:
            store = SyntheticStore(folder, self.splits.schema, sync_every=self.cfg.plan.sync_every)
            if summary is not None:
                items = self.plan_items()
                listed = len(store.open()) if self.is_main else 0
                fill_store(generator, items, store, batch_size=self.cfg.plan.batch_size,
                           progress=self.cfg.progress and self.is_main, processes=self.processes)
                if self.is_main:
                    summary.update(planned=len(items), generated_now=len(store) - listed, plan=self.plan_fp,
                                   processes=self.processes.count)
                    self._sample_grid(store, folder / "samples.png")
        self._synthetic_store = store  # opened once per experiment (its index), not once per arm and seed
        return store

    def synthetic_images(self, *, filtered: bool = False) -> LabeledImages:
        """The generated images arms train on, in plan order (the same whatever the number of processes that
        made them): with ``filtered`` and ``filters`` configured, the first target count of images per class that
        every filter kept (see :meth:`filter_synthetic`); else the target items of the plan, unfiltered (a store
        may hold more, from a larger earlier plan). Loaded once per experiment."""
        filtered = filtered and bool(self.cfg.filters)
        if filtered not in self._synthetic_images:
            if filtered:
                from synthaug.filters.stage import selected_ids

                ids = selected_ids(self)
            else:
                ids = [it.item_id for it in self.target_items()]
            self._synthetic_images[filtered] = self.synthetic().load(mode=self.splits.train.mode, ids=ids)
        return self._synthetic_images[filtered]

    def filter_synthetic(self) -> dict:
        """Stage ``filter``: every configured filter keeps or rejects every generated image (decisions in
        ``filter/decisions.jsonl``; the store is not rewritten). Returns the stage record."""
        from synthaug.filters.stage import run_filters

        return run_filters(self)

    def _generated_arm_fp(self, arm: ArmConfig) -> str:
        """The synthetic images a generated arm trains on: filtered (by the filters' configs) or not."""
        if arm.use_filters and self.cfg.filters:
            from synthaug.filters.stage import filter_parts

            return fingerprint(filter_parts(self))
        return self.synthetic_set_fp

    @cached_property
    def pseudo_control(self) -> str | None:
        """What the pseudo-labelled control is for this generator, or None when it has none."""
        return GENERATORS.get(self.cfg.generator.name).pseudo_control

    def pseudo(self) -> SyntheticStore:
        """Stage ``pseudo``: the control set — unconditional samples labelled by a real-only classifier."""
        if self.pseudo_control is None:
            raise SettingError(f"Generator {self.cfg.generator.name!r} has no pseudo-labelled control (it cannot "
                               "draw class-agnostic images); remove the arms with synthetic: pseudo.")
        count = self.cfg.pseudo.count or int(self.plan_counts().sum())
        arm = self.cfg.arm(self.cfg.pseudo.classifier_arm)
        classifier_dir = self.dir / self.train_arm(arm, self.cfg.seeds[0])["folder"] / "model"
        self.fit_generator()
        with self._stage("pseudo", self._pseudo_parts(), redo=True) as summary:
            store = SyntheticStore(self.dir / "pseudo", self.splits.schema)
            if summary is not None:
                g = self.cfg.generator
                labeller = create_generator(
                    "pseudo-label", {"classifier": str(classifier_dir), "base": g.name, "base_params": g.params,
                                     "base_workdir": str(self.dir / "generator")},
                    self.splits.schema, device=self.device, workdir=self.dir / "pseudo", seed=self.cfg.seed,
                    progress=self.cfg.progress)
                labeller.use_real(self.splits.train)
                items = unconditional_items(count, seed=self.cfg.seed)
                made = fill_store(labeller, items, store, batch_size=self.cfg.plan.batch_size,
                                  progress=self.cfg.progress)
                labels = np.asarray([r["label_ids"][0] for r in store.records()])
                summary.update(planned=count, generated_now=made, control=self.pseudo_control,
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
    def _arm_parts(self, arm: ArmConfig, seed: int) -> dict[str, Any]:
        synthetic = {"none": None, "generated": lambda: self._generated_arm_fp(arm),
                     "pseudo": lambda: fingerprint(self._pseudo_parts())}[arm.synthetic]
        return {"data": self.data_fp, "train": self.cfg.arm_train(arm).model_dump(mode="json", exclude=PERFORMANCE),
                "seed": seed, "synthetic": [arm.synthetic, synthetic() if synthetic else None]}

    def _pseudo_parts(self) -> dict[str, Any]:
        """The control set's inputs: the model, the sampling, its size and the classifier that labels it."""
        labeller = self.cfg.arm(self.cfg.pseudo.classifier_arm)
        count = self.cfg.pseudo.count or int(self.plan_counts().sum())
        return {**self._synthetic_parts, "count": count, "labeller": self._arm_fp(labeller, self.cfg.seeds[0])}

    def _arm_fp(self, arm: ArmConfig, seed: int) -> str:
        return fingerprint(self._arm_parts(arm, seed))

    def train_arm(self, arm: ArmConfig, seed: int) -> dict:
        """Stage ``train/<arm>/seed<k>``: trains one classifier and evaluates it on the test split.

        The epoch checkpoint is kept until the test metrics and ``done.json`` are written, so a crash at any
        point resumes instead of retraining.
        """
        rel = f"train/{arm.name}/seed{seed}"
        self._check(rel, self._arm_parts(arm, seed))  # before any stage of this run writes anything
        synthetic = None
        if arm.synthetic == "generated":
            synthetic = self.synthetic_images(filtered=arm.use_filters)
        elif arm.synthetic == "pseudo":
            synthetic = self.pseudo().load(mode=self.splits.train.mode)
        self.stats()
        done = self.train_stage(rel, self._arm_parts(arm, seed), self.cfg.arm_train(arm), synthetic, seed)
        if self.processes.is_main:
            (self.dir / "train" / arm.name / "left_out.json").unlink(missing_ok=True)
        return done

    def train_stage(self, rel: str, parts: dict[str, Any], tcfg: TrainConfig, synthetic: LabeledImages | None,
                    seed: int) -> dict:
        """One classifier stage in ``rel``: train (resumable), evaluate on the test split, record ``done.json``;
        the epoch checkpoint is removed only after that. Returns the stage's record."""
        folder = self.dir / rel
        main = self.processes.is_main
        with self._stage(rel, parts, shared=True) as summary:  # every process trains its share
            if summary is not None:
                if main:
                    write_json(folder / "train_config.json", tcfg.model_dump(mode="json"))
                model = train_classifier(self.splits.train, synthetic, tcfg, folder, val=self.splits.val,
                                         device=self.device, seed=seed, progress=self.cfg.progress,
                                         keep_checkpoint=True, processes=self.processes)
                if main:
                    metrics = self._evaluate(model, folder)
                    summary.update(folder=rel, accuracy=metrics["accuracy"],
                                   synthetic=0 if synthetic is None else len(synthetic))
        self.processes.barrier()  # done.json is written
        if main:  # only now: a crash before done.json resumes instead of retraining
            remove_checkpoint(folder / "last")
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
        self.hold_lock()
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
        self.synthetic()
        parts = {"synthetic": self.synthetic_set_fp, "judge": self.cfg.judge.model_dump(),
                 "train": self.cfg.train.model_dump(mode="json", exclude=PERFORMANCE)}
        with self._stage("judge", parts, redo=True) as summary:
            if summary is not None:
                cfg = TrainConfig(**{**self.cfg.train.model_dump(), "epochs": self.cfg.judge.epochs,
                                     "loss": "ce", "mixing": "real-only"})
                model = train_classifier(self.balanced_pool, None, cfg, self.dir / "judge", device=self.device,
                                         seed=self.cfg.seed, progress=self.cfg.progress)
                synth = self.synthetic_images()
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
    def run(self, *, only: Callable[[ArmConfig], bool] | None = None) -> dict | None:
        """Every stage in order; returns the report (see :mod:`synthaug.report.tables`), or None on a process
        other than the main one under ``accelerate launch``."""
        self.preflight([a for a in self.cfg.arms if only is None or only(a)])  # refuses before anything runs
        self.stats()
        if any(a.synthetic == "generated" and (only is None or only(a)) for a in self.cfg.arms):
            self.synthetic()  # under accelerate launch every rank takes its share of the generation
        for arm in self.cfg.arms:
            if only is not None and not only(arm):
                continue
            if arm.synthetic == "pseudo" and self.pseudo_control is None:
                reason = (f"generator {self.cfg.generator.name!r} cannot draw class-agnostic images, so it has no "
                          "pseudo-labelled control")
                log.warning("Arm %s left out: %s.", arm.name, reason)
                if self.processes.is_main:
                    self.hold_lock()
                    write_json(self.dir / "train" / arm.name / "left_out.json", {"arm": arm.name, "reason": reason})
                continue
            for seed in self.cfg.seeds:
                self.train_arm(arm, seed)
        return self._main_alone(self._finish_run)

    def _finish_run(self) -> dict:
        self.hold_lock()  # the report and the studies write even when every stage was done
        if self.cfg.filters and any(a.synthetic == "generated" for a in self.cfg.arms):
            self.filter_synthetic()  # done already when a filtered arm ran; else it records the decisions
        from synthaug.evaluate.stages import run_evaluation
        from synthaug.report.html import write_html_report
        from synthaug.report.tables import build_report

        self.judge()
        run_evaluation(self)  # the studies of `evaluation:` (fidelity, memorisation, CAS, oracle, replacement, ...)
        report = build_report(self.dir)
        write_html_report(self.dir)  # report/report.html, self-contained, from the run folder's files
        return report

    def _main_alone(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the main process alone, training single-process, while the others wait; their result
        is None. (Under ``accelerate launch`` the arms train data-parallel; the judge and the evaluation
        studies' classifiers train on the main process.)"""
        everyone, result = self.processes, None
        if everyone.is_main:
            self.processes = Processes()
            try:
                result = work()
            finally:
                self.processes = everyone
        everyone.barrier()
        return result
