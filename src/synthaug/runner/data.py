"""Stage ``data``: the splits the run uses (``data/splits.json``) and the class statistics of the training
split (``stats.json``, ``stats.txt``, ``class_counts.png``)."""

from __future__ import annotations

from synthaug.data import ClassStats
from synthaug.runner.context import RunContext
from synthaug.utils import read_json, write_json


def data_stage(ctx: RunContext) -> ClassStats:
    """Records the splits (redone when the data changes) and writes the class statistics of the training split.

    The statistics depend on the reporting thresholds (``data.shots``) too, which invalidate nothing: they are
    rewritten whenever they differ from the saved ones.

    Returns:
        The class statistics (counts, imbalance ratio, many/medium/few groups).
    """
    splits = ctx.splits
    stats = ClassStats.from_labels(splits.schema, splits.train.labels, ctx.thresholds)
    folder = ctx.dir / "data"
    with ctx.records.record("data", ctx.data_parts, redo=True) as summary:
        if summary is not None and ctx.is_main:
            write_json(folder / "splits.json", {k: getattr(splits, k).ids for k in ("train", "val", "test")})
            summary.update(train=len(splits.train), val=len(splits.val), test=len(splits.test),
                           skipped=splits.train.skipped)
    if ctx.is_main and (not (folder / "stats.json").is_file() or read_json(folder / "stats.json") != stats.to_dict()):
        ctx.records.hold_lock()
        write_json(folder / "stats.json", stats.to_dict())
        (folder / "stats.txt").write_text(stats.format() + "\n")
        stats.bar_chart(folder / "class_counts.png")
    return stats
