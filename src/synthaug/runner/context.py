"""The run context: what every stage of one run reads, built once and never changed by a stage.

:class:`RunContext` holds the config, the run folder, the device and processes, the stage records (with the
run folder's lock), and, computed on first use and then fixed: the data splits (read back from
``data/splits.json`` when the data stage is done), the generation plan, and every stage's fingerprint parts:

- ``data``: the data fields and the resolved data (image ids, labels, file sizes and mtimes), not ``shots``;
- ``generator``: the data and the generator's *training* fields (``GeneratorConfig.training_part``);
- ``synthetic``: the trained model and the *sampling* fields; the plan is recorded beside it, so a plan that
  grows reuses every image already made;
- ``filter``: the generated set, every filter's config (thresholds included) and the per-class targets;
- ``train/<arm>/seed<k>``: the data, the arm's training fields (not ``num_workers``), the seed, and the
  synthetic set it trains on (the filter stage's inputs for a filtered arm);
- ``pseudo``: the model, the sampling, the control set's size and the classifier that labels it.

Loaded sets a stage shares with later ones (the generator, the synthetic store, its images) are kept in the
context's memo (:meth:`RunContext.memo`), so each is loaded once per run.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from synthaug.config import ArmConfig, ExperimentConfig, fingerprint
from synthaug.data import DataSplits, ShotThresholds, load_source
from synthaug.data.attributes import read_class_names
from synthaug.data.longtail import (
    SplitsWithoutValidation, apply_longtail_profile, carve_validation, fewshot_subsample,
)
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import SettingError
from synthaug.generators import GENERATORS, generator_config
from synthaug.plan import (
    PlanItem, balance_counts, fixed_counts, generation_counts, make_items, ratio_counts, rare_attribute_items,
    take_per_class,
)
from synthaug.processes import Processes
from synthaug.runlock import RunLock
from synthaug.runner.records import StageRecords
from synthaug.torch_utils import resolve_device
from synthaug.train.config import PERFORMANCE, TrainConfig
from synthaug.train.batch_composition import class_shares
from synthaug.utils import read_json

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- data splits
def content_hash(splits: DataSplits) -> str:
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


def concatenate(parts: list[LabeledImages]) -> LabeledImages:
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


def load_splits(cfg: ExperimentConfig) -> tuple[DataSplits, LabeledImages]:
    """(the train/val/test splits, the training split long-tailed if configured; the balanced real pool: the
    training images before long-tailing), loaded and checked from the source."""
    d = cfg.data
    splits = load_source(d.source, **d.loader_options())
    pool = full = splits.train
    if d.longtail is not None:
        lt = d.longtail
        splits.train = apply_longtail_profile(full, profile=lt.profile, imbalance_ratio=lt.imbalance_ratio,
                                              seed=cfg.seed, class_order=lt.class_order, n_max=lt.n_max)
    if isinstance(splits, SplitsWithoutValidation):  # validation from the training images not kept
        train, val, pool = carve_validation(
            full, splits.train if d.longtail is not None else None, per_class=splits.val_per_class,
            seed=splits.split_seed)
        splits = DataSplits(train, val, splits.test)
    if d.fewshot is not None:
        splits.train = fewshot_subsample(splits.train, shots=d.fewshot.shots, draw=d.fewshot.draw)
    return splits, pool


def recorded_splits(cfg: ExperimentConfig) -> DataSplits | None:
    """The splits of ``data/splits.json`` from the source listed without image checks; None when the data
    stage is not done, was done with other data settings, or the listing no longer has those images and
    labels (then the caller loads and checks again)."""
    folder = cfg.run_dir / "data"
    if not ((folder / "done.json").is_file() and (folder / "splits.json").is_file()):
        return None
    record, recorded = read_json(folder / "done.json"), read_json(folder / "splits.json")
    same = {"data": cfg.data.fingerprint_part(), "seed": cfg.seed}
    if any(record.get("parts", {}).get(k) != fingerprint(v) for k, v in same.items()):
        return None
    from synthaug.data.sources import images_checked_before

    with images_checked_before():
        listed = load_source(cfg.data.source, **cfg.data.loader_options())
    # a split carved again without the skipped images may differ: take each recorded id from the whole listing
    everything = concatenate([listed.train, listed.val, listed.test])
    index = {image_id: i for i, image_id in enumerate(everything.ids)}
    if any(image_id not in index for split in ("train", "val", "test") for image_id in recorded[split]):
        return None
    splits = DataSplits(**{split: everything.subset([index[image_id] for image_id in recorded[split]])
                           for split in ("train", "val", "test")})
    if fingerprint(content_hash(splits)) != record["parts"].get("content"):
        return None
    splits.train.skipped = list(record.get("skipped") or [])
    log.info("Data splits read back from %s (images checked when they were recorded).", folder / "splits.json")
    return splits


# ---------------------------------------------------------------------------------------------- the context
class RunContext:
    """What the stages of one run read. Build it with :func:`synthaug.runner.open_run`.

    Attributes:
        cfg: the validated experiment config.
        dir: the run folder (``output_dir/name``).
        device: the torch device of this process.
        processes: the processes of this run (several under ``accelerate launch``; rank 0 writes).
        records: the run's stage records (done / reuse / record) and its write lock.
    """

    def __init__(self, cfg: ExperimentConfig, *, lock: RunLock | None = None):
        self.cfg = cfg
        self.dir: Path = cfg.run_dir
        device = resolve_device(cfg.device)
        # under `accelerate launch`: generation and classifier training are shared; only the main process writes
        self.processes = Processes.launched(device)
        self.device = self.processes.device(device)
        self.records = StageRecords(cfg, self.processes, lock)
        self._memo: dict[Any, Any] = {}

    @property
    def is_main(self) -> bool:
        return self.processes.is_main

    @property
    def lock(self) -> RunLock | None:
        return self.records.lock

    def memo(self, key: Any, build: Callable[[], T]) -> T:
        """``build()`` once per run (shared by the stages and by :meth:`main_alone`'s context)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def main_alone(self) -> RunContext:
        """This context on the main process alone (single-process training; shares every computed value)."""
        other = copy.copy(self)
        other.processes = Processes()
        other.records = self.records.with_processes(other.processes)
        return other

    # ------------------------------------------------------------------------------------------ data
    @cached_property
    def splits(self) -> DataSplits:
        """The train/val/test splits, the training split long-tailed if configured: read back from
        ``data/splits.json`` when the data stage is done with the same data settings and the images listed there
        are unchanged (no image is decoded again to check it), else loaded and checked."""
        recorded = recorded_splits(self.cfg)
        if recorded is not None:
            return recorded
        splits, pool = load_splits(self.cfg)
        self.__dict__["balanced_pool"] = pool
        return splits

    @cached_property
    def balanced_pool(self) -> LabeledImages:
        """The training split before long-tailing (checked: loaded again when the splits were read back)."""
        self.splits  # noqa: B018  (a fresh load sets the pool too)
        if "balanced_pool" in self.__dict__:
            return self.__dict__["balanced_pool"]
        return load_splits(self.cfg)[1]

    @property
    def thresholds(self) -> ShotThresholds:
        return ShotThresholds(self.cfg.data.shots.many, self.cfg.data.shots.few)

    @cached_property
    def train_counts(self) -> list[np.ndarray]:
        """Per label group, the real training count of every class."""
        t = self.splits.train
        return [np.bincount(t.labels[:, g], minlength=n) for g, n in enumerate(t.schema.group_sizes)]

    @cached_property
    def data_parts(self) -> dict[str, Any]:
        return {"data": self.cfg.data.fingerprint_part(), "seed": self.cfg.seed,
                "content": content_hash(self.splits)}

    @cached_property
    def data_fp(self) -> str:
        """The data fields (not the reporting thresholds), the seed, and the resolved data itself: every
        image id and label of every split, and each image file's size and modification time (no content
        hashing), so a relabelled manifest or a replaced image is a changed dataset."""
        return fingerprint(self.data_parts)

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
    def configured_generator(self):
        """The generator's config as written (``generator.params``)."""
        g = self.cfg.generator
        return generator_config(g.name, g.params)

    @cached_property
    def feedback_arm(self) -> ArmConfig | None:
        """The arm whose first-seed classifier guides sampling (``generator.params.feedback.classifier`` naming an
        arm), or None when feedback is off or names a model folder.

        Raises:
            SettingError: it names an arm that trains on synthetic images, or the run's oracle or judge (which
                score the result, so they must not shape it).
        """
        feedback = getattr(self.configured_generator, "feedback", None)
        if feedback is None:
            return None
        field, given = "generator.params.feedback.classifier", feedback.classifier
        arms = {a.name: a for a in self.cfg.arms}
        if given in arms:
            if arms[given].synthetic != "none":
                raise SettingError(f"{field}={given!r} names an arm that trains on synthetic images "
                                   f"(synthetic: {arms[given].synthetic}); feedback needs a classifier trained on "
                                   f"the training split only: name a real-only arm, e.g. "
                                   f"{[a for a, c in arms.items() if c.synthetic == 'none'][:3]}.")
            return arms[given]
        path = Path(given).expanduser().resolve()
        for scorer in (self.dir / "evaluation" / "oracle", self.dir / "judge"):
            if given == scorer.name or path.is_relative_to(scorer.resolve()):
                raise SettingError(f"{field}={given!r} is the run's {scorer.name} classifier, which scores the "
                                   "synthetic images (it is trained on the balanced pool); guide sampling with a "
                                   "classifier trained on the training split only, e.g. a real-only arm's name.")
        return None

    @cached_property
    def generator_config(self):
        """The generator's config with run-level names resolved: a feedback classifier given as an arm name
        becomes that arm's model folder (``train/<arm>/seed<first seed>/model``)."""
        config, arm = self.configured_generator, self.feedback_arm
        if arm is None:
            return config
        folder = self.dir / self.arm_rel(arm, self.cfg.seeds[0]) / "model"
        return config.model_copy(update={"feedback": config.feedback.model_copy(update={"classifier": str(folder)})})

    @cached_property
    def generator_parts(self) -> dict[str, Any]:
        return {"data": self.data_fp, "generator": [self.cfg.generator.name, self.generator_config.training_part()]}

    @property
    def generator_trains_nothing(self) -> bool:
        """The generators that train (ddpm, mvc, sd-finetune) are the ones that train data-parallel and resume
        from checkpoints; any other only loads a pretrained model (or records real images) in ``fit``."""
        return not GENERATORS.get(self.cfg.generator.name).distributed_fit

    @cached_property
    def generator_fp(self) -> str:
        return fingerprint(self.generator_parts)

    @cached_property
    def pseudo_control(self) -> str | None:
        """What the pseudo-labelled control is for this generator, or None when it has none."""
        return GENERATORS.get(self.cfg.generator.name).pseudo_control

    # ------------------------------------------------------------------------------------------ plan
    @cached_property
    def plan_items(self) -> list[PlanItem]:
        """The generation plan: per-class counts for single-label data, or (``plan.strategy:
        rare-attributes``, required for several label groups) copies of training images with rare classes."""
        p, schema, train = self.cfg.plan, self.splits.schema, self.splits.train
        if p.strategy == "rare-attributes":
            return rare_attribute_items(schema, train.labels, train.ids, seed=self.cfg.seed,
                                        thresholds=self.thresholds, rare_shots=p.rare_shots, per_source=p.per_source,
                                        total=p.total, template=p.caption_template)
        # refused with its size before one item is built (an extra zero would build ~220 bytes per item)
        counts = generation_counts(self.plan_counts, strategy=p.strategy, overgenerate=p.overgenerate,
                                   n_train=len(train))
        return make_items(schema, counts, seed=self.cfg.seed)

    @cached_property
    def plan_counts(self) -> np.ndarray:
        """Planned images per class of the first label group (the target: before ``plan.overgenerate``)."""
        p, schema = self.cfg.plan, self.splits.schema
        if p.strategy == "rare-attributes":
            first = [it.labels[0] for it in self.plan_items]
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
    def target_items(self) -> list[PlanItem]:
        """The items an unfiltered arm uses: the first ``plan_counts`` items of each class in plan order (the
        whole plan unless ``plan.overgenerate`` > 1; then the items a plan without it would have)."""
        items = self.plan_items
        if self.cfg.plan.overgenerate == 1:
            return items
        taken = take_per_class([it.labels[0] for it in items], np.ones(len(items), bool), self.plan_counts)
        return [it for it, t in zip(items, taken) if t]

    # ------------------------------------------------------------------------------------------ synthetic sets
    @cached_property
    def synthetic_parts(self) -> dict[str, Any]:
        """The synthetic set's inputs: the trained model and the sampling fields."""
        sampling = self.configured_generator.sampling_part()
        if self.feedback_arm is not None:  # the classifier's own inputs, not its name (nor where the run lies)
            sampling["feedback"]["classifier"] = {"arm": self.feedback_arm.name,
                                                  "fingerprint": self.arm_fp(self.feedback_arm, self.cfg.seeds[0])}
        return {"generator": self.generator_fp, "sampling": sampling}

    @cached_property
    def plan_fp(self) -> str:
        return fingerprint([it.to_dict() for it in self.plan_items])

    @cached_property
    def generated_fp(self) -> str:
        """The whole generated set: the model, the sampling and the plan (over-generated items included)."""
        return fingerprint(self.synthetic_parts, self.plan_fp)

    @cached_property
    def synthetic_set_fp(self) -> str:
        """What an arm trained on the unfiltered set depends on: the model, the sampling and its items."""
        if self.cfg.plan.overgenerate == 1:
            return self.generated_fp
        return fingerprint(self.synthetic_parts, fingerprint([it.to_dict() for it in self.target_items]))

    @cached_property
    def filter_parts(self) -> dict[str, Any]:
        """What the filter decisions depend on: the generated set (the whole plan), every filter's config, the
        targets."""
        return {"synthetic": self.generated_fp, "filters": [f.model_dump(mode="json") for f in self.cfg.filters],
                "targets": self.plan_counts.tolist()}

    @property
    def pseudo_count(self) -> int:
        """The size of the pseudo-labelled control set (``pseudo.count``, else the plan's target total)."""
        return self.cfg.pseudo.count or int(self.plan_counts.sum())

    @property
    def pseudo_labeller(self) -> tuple[ArmConfig, int]:
        """The arm (and seed) whose classifier labels the pseudo-labelled control."""
        return self.cfg.arm(self.cfg.pseudo.classifier_arm), self.cfg.seeds[0]

    def pseudo_parts(self, count: int | None = None) -> dict[str, Any]:
        """A pseudo-labelled set's inputs: the model, the sampling, its size (default: the control's) and the
        classifier that labels it."""
        labeller, seed = self.pseudo_labeller
        return {**self.synthetic_parts, "count": self.pseudo_count if count is None else count,
                "labeller": self.arm_fp(labeller, seed)}

    # ------------------------------------------------------------------------------------------ classifier arms
    def arm_train(self, arm: ArmConfig) -> TrainConfig:
        """The arm's training config (the ``train`` section with the arm's changes)."""
        return self.cfg.arm_train(arm)

    def train_part(self, arm: ArmConfig) -> dict[str, Any]:
        """The arm's training fields a classifier depends on (no performance knobs)."""
        return self.arm_train(arm).model_dump(mode="json", exclude=PERFORMANCE)

    def synthetic_fp(self, arm: ArmConfig) -> str | None:
        """The fingerprint of the synthetic images ``arm`` trains on (None for a real-only arm)."""
        if arm.synthetic == "generated":
            return fingerprint(self.filter_parts) if arm.use_filters and self.cfg.filters else self.synthetic_set_fp
        if arm.synthetic == "pseudo":
            return fingerprint(self.pseudo_parts())
        return None

    def synthetic_shares(self, arm: ArmConfig) -> np.ndarray | None:
        """Per class, the share of its synthetic images ``arm`` uses (``train.synthetic_ratio`` resolved against
        this data's classes and shot groups), or None when the arm sets no ratio or uses no synthetic images.

        Raises:
            SettingError: a ratio key that is neither a class nor a shot group (lists the valid ones).
        """
        ratio = self.arm_train(arm).synthetic_ratio
        if ratio is None or arm.synthetic == "none":
            return None
        return class_shares(ratio, self.splits.schema.groups[0].classes, self.train_counts[0], self.thresholds,
                            where=f"train.synthetic_ratio of arm {arm.name!r}")

    def arm_parts(self, arm: ArmConfig, seed: int) -> dict[str, Any]:
        """The inputs of stage ``train/<arm>/seed<seed>`` (with a synthetic ratio: the per-class shares it
        resolves to, since its shot groups follow ``data.shots``)."""
        parts = {"data": self.data_fp, "train": self.train_part(arm), "seed": seed,
                 "synthetic": [arm.synthetic, self.synthetic_fp(arm)]}
        shares = self.synthetic_shares(arm)
        if shares is not None:
            parts["synthetic_shares"] = shares.tolist()
        if self.arm_train(arm).relabel.weight > 0:  # its stand-ins are drawn once per run seed
            parts["relabel_seed"] = self.cfg.seed
        return parts

    def arm_fp(self, arm: ArmConfig, seed: int) -> str:
        return fingerprint(self.arm_parts(arm, seed))

    @staticmethod
    def arm_rel(arm: ArmConfig | str, seed: int) -> str:
        """The stage folder of an arm and seed, relative to the run folder."""
        return f"train/{getattr(arm, 'name', arm)}/seed{seed}"
