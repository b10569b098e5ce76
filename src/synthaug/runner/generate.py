"""Stages ``generator`` and ``synthetic``: train (or load) the configured generator, then fill the synthetic
store with the plan's images (``synthetic/images/…``, ``metadata.jsonl``, ``samples.png``).

The generator trains resumably from its checkpoints and is recorded done only after the model it will sample
from loads. Changed sampling settings regenerate the set (the model is kept; the old set kept aside); a plan
that grew reuses every image already made. :func:`study_set` fills a store for another plan of the same
generator (the evaluation studies' sets).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from synthaug.config import fingerprint
from synthaug.data.schema import LabeledImages
from synthaug.generators import Generator, create_generator, fill_store
from synthaug.plan import make_items
from synthaug.runner.context import RunContext
from synthaug.runner.data import data_stage
from synthaug.runner.train import train_arm
from synthaug.store import SyntheticStore
from synthaug.utils import read_json

log = logging.getLogger(__name__)


def _generator(ctx: RunContext) -> Generator:
    def build() -> Generator:
        generator = create_generator(ctx.cfg.generator.name, ctx.generator_config, ctx.splits.schema,
                                     device=ctx.device, workdir=ctx.dir / "generator", seed=ctx.cfg.seed,
                                     progress=ctx.cfg.progress)
        generator.use_real(ctx.splits.train)  # sampling may start from real images (ddpm's translate_from)
        return generator

    return ctx.memo("generator", build)


def fit_generator(ctx: RunContext) -> Generator:
    """Stage ``generator``: trains / fine-tunes the generator (resumes from its checkpoints), then checks that
    the model it will sample from loads; only then is the stage recorded done.

    Returns:
        The fitted generator, ready to sample.

    Raises:
        StageMismatch: the generator was trained (or started) with other inputs.
    """
    ctx.plan_items  # noqa: B018  (a plan that cannot work, e.g. an unknown class, fails before any training)
    # a generator that trains nothing (a pretrained pipeline) keeps nothing to resume: a failed load leaves
    # the stage fresh, so the rerun with the right model path is not refused as "started with other inputs"
    restartable = ctx.generator_trains_nothing
    ctx.records.reuse("generator", ctx.generator_parts, restartable=restartable)  # before this run writes
    data_stage(ctx)
    if ctx.feedback_arm is not None:  # the classifier that guides sampling (trained on the training split only)
        train_arm(ctx, ctx.feedback_arm, ctx.cfg.seeds[0])  # must exist before check_loadable loads it
    generator = _generator(ctx)
    # under `accelerate launch` a generator that trains data-parallel fits on every process (rank 0 alone
    # writes the model and the record); any other fits on rank 0 while the others wait
    with ctx.records.record("generator", ctx.generator_parts, shared=generator.distributed_fit,
                            restartable=restartable) as summary:
        if summary is not None:
            generator.fit(ctx.splits.train)
            generator.check_loadable()
            summary["generator"] = ctx.cfg.generator.name
    if not ctx.is_main:  # the other ranks sample from the model rank 0 trained (and recorded)
        generator.check_loadable()
    return generator


def synthetic_stage(ctx: RunContext) -> SyntheticStore:
    """Stage ``synthetic``: generates the planned images into the store (resumes after a crash).

    Returns:
        The synthetic store (opened once per run).
    """
    return ctx.memo("synthetic-store", lambda: _fill_synthetic(ctx))


def _fill_synthetic(ctx: RunContext) -> SyntheticStore:
    generator = fit_generator(ctx)
    folder = ctx.dir / "synthetic"
    record = folder / "done.json"
    if ctx.is_main and record.is_file() \
            and read_json(record).get("fingerprint") == fingerprint(ctx.synthetic_parts) \
            and read_json(record).get("plan") != ctx.plan_fp:
        log.info("The generation plan changed; generating the new items into %s.", folder)
        ctx.records.hold_lock()
        record.unlink()
    with ctx.records.record("synthetic", ctx.synthetic_parts, redo=True, shared=True) as summary:
        store = SyntheticStore(folder, ctx.splits.schema, sync_every=ctx.cfg.plan.sync_every)
        if summary is not None:
            items = ctx.plan_items
            listed = len(store.open()) if ctx.is_main else 0
            fill_store(generator, items, store, batch_size=ctx.cfg.plan.batch_size,
                       progress=ctx.cfg.progress and ctx.is_main, processes=ctx.processes)
            if ctx.is_main:
                summary.update(planned=len(items), generated_now=len(store) - listed, plan=ctx.plan_fp,
                               processes=ctx.processes.count)
                sample_grid(store, folder / "samples.png", mode=ctx.splits.train.mode)
    return store


def synthetic_images(ctx: RunContext, ids: list[str] | None = None) -> LabeledImages:
    """Generated images in plan order (the same whatever the number of processes that made them): ``ids``, or
    the target items of the plan (a store may hold more, from a larger earlier plan or ``plan.overgenerate``).
    The target items are loaded once per run."""
    store = synthetic_stage(ctx)
    if ids is not None:
        return store.load(mode=ctx.splits.train.mode, ids=ids)
    return ctx.memo("synthetic-images", lambda: store.load(mode=ctx.splits.train.mode,
                                                           ids=[it.item_id for it in ctx.target_items]))


def study_set(ctx: RunContext, rel: str, counts: np.ndarray) -> tuple[LabeledImages, str]:
    """A synthetic set of per-class ``counts`` from the run's generator under ``rel`` (item ids and seeds as in
    the main plan, so an item both plans share is the same image). Returns (its images, its fingerprint)."""
    generator = fit_generator(ctx)
    items = make_items(ctx.splits.schema, counts, seed=ctx.cfg.seed)
    parts = {**ctx.synthetic_parts, "plan": fingerprint([it.to_dict() for it in items])}
    with ctx.records.record(rel, parts, redo=True) as summary:
        if summary is not None:
            made = fill_store(generator, items, SyntheticStore(ctx.dir / rel, ctx.splits.schema),
                              batch_size=ctx.cfg.plan.batch_size, progress=ctx.cfg.progress)
            summary.update(planned=len(items), generated_now=made, counts=np.asarray(counts).tolist())
    images = SyntheticStore(ctx.dir / rel, ctx.splits.schema).load(mode=ctx.splits.train.mode,
                                                                   ids=[it.item_id for it in items])
    return images, fingerprint(parts)


def sample_grid(store: SyntheticStore, path: Path, *, mode: str, per_class: int = 8) -> None:
    """A grid of up to ``per_class`` images of every class of ``store`` (one row per class), saved as ``path``."""
    from synthaug.imaging import image_grid

    images = store.load(mode=mode)
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
