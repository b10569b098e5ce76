"""The pseudo-labelled sets: unconditional samples of the run's generator labelled by a real-only classifier.

:func:`pseudo_labelled_set` is the one builder; it makes stage ``pseudo`` (the control set of the arms with
``synthetic: pseudo``, :func:`pseudo_stage`) and the targeted-classes study's control set. The labelling
classifier is an input (its model folder), trained beforehand by the caller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.errors import SettingError
from synthaug.generators import create_generator, fill_store
from synthaug.plan import unconditional_items
from synthaug.runner.context import RunContext
from synthaug.runner.generate import fit_generator
from synthaug.store import SyntheticStore


def pseudo_labelled_set(ctx: RunContext, rel: str, labeller: Path, count: int) -> SyntheticStore:
    """Stage ``rel``: ``count`` unconditional samples of the run's generator, each labelled with the class the
    classifier in ``labeller`` (a model folder) predicts. Redone when the model, the sampling, the count or the
    labeller change.

    Returns:
        The store of the set.

    Raises:
        SettingError: the generator cannot draw class-agnostic images (it has no pseudo-labelled control).
    """
    if ctx.pseudo_control is None:
        raise SettingError(f"Generator {ctx.cfg.generator.name!r} has no pseudo-labelled control (it cannot "
                           "draw class-agnostic images); remove the arms with synthetic: pseudo.")
    fit_generator(ctx)
    with ctx.records.record(rel, ctx.pseudo_parts(count), redo=True) as summary:
        store = SyntheticStore(ctx.dir / rel, ctx.splits.schema)
        if summary is not None:
            g = ctx.cfg.generator
            generator = create_generator(
                "pseudo-label", {"classifier": str(labeller), "base": g.name, "base_params": g.params,
                                 "base_workdir": str(ctx.dir / "generator")},
                ctx.splits.schema, device=ctx.device, workdir=ctx.dir / rel, seed=ctx.cfg.seed,
                progress=ctx.cfg.progress)
            generator.use_real(ctx.splits.train)
            made = fill_store(generator, unconditional_items(count, seed=ctx.cfg.seed), store,
                              batch_size=ctx.cfg.plan.batch_size, progress=ctx.cfg.progress)
            labels = np.asarray([r["label_ids"][0] for r in store.records()])
            summary.update(planned=count, generated_now=made, control=ctx.pseudo_control,
                           label_counts=np.bincount(labels, minlength=len(ctx.splits.schema.groups[0].classes)).tolist())
    return store


def pseudo_stage(ctx: RunContext, labeller: Path) -> SyntheticStore:
    """Stage ``pseudo``: the control set of the arms with ``synthetic: pseudo`` (``pseudo.count`` images, by
    default as many as the plan's targets), labelled by the classifier in ``labeller`` (the model folder of
    ``pseudo.classifier_arm``'s first seed)."""
    return pseudo_labelled_set(ctx, "pseudo", labeller, ctx.pseudo_count)
