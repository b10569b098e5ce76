"""Stage ``judge``: how many synthetic images a classifier trained on the balanced real pool recognises as their
intended class (per class), i.e. whether the generator gets the labels right."""

from __future__ import annotations

from synthaug.runner.context import RunContext
from synthaug.runner.generate import synthetic_images, synthetic_stage
from synthaug.train import TrainConfig, predict, train_classifier
from synthaug.train.config import PERFORMANCE
from synthaug.utils import read_json


def judge_stage(ctx: RunContext) -> dict | None:
    """The judge's per-class label accuracy on the synthetic set and its own real test accuracy.

    Returns:
        The stage record, or None when ``judge.enabled`` is off or no arm uses the generated set.
    """
    cfg = ctx.cfg
    if not cfg.judge.enabled or not any(a.synthetic == "generated" for a in cfg.arms):
        return None
    synthetic_stage(ctx)
    # the top-level training settings with the judge's own epochs, loss and mixing: what it trains with, so a
    # change to train.epochs, loss or mixing (the arms') leaves the judge alone
    tcfg = TrainConfig(**{**cfg.train.model_dump(), "epochs": cfg.judge.epochs, "loss": "ce",
                          "mixing": "real-only"})
    parts = {"synthetic": ctx.synthetic_set_fp, "judge": cfg.judge.model_dump(),
             "train": tcfg.model_dump(mode="json", exclude=PERFORMANCE)}
    with ctx.records.record("judge", parts, redo=True) as summary:
        if summary is not None:
            model = train_classifier(ctx.balanced_pool, None, tcfg, ctx.dir / "judge", device=ctx.device,
                                     seed=cfg.seed, progress=cfg.progress)
            synth = synthetic_images(ctx)
            size = read_json(ctx.dir / "judge" / "model" / "classifier.json")["image_size"]
            pred = predict(model, synth, size, device=ctx.device).argmax(1).numpy()
            real_acc = (predict(model, ctx.splits.test, size, device=ctx.device).argmax(1).numpy()
                        == ctx.splits.test.labels[:, 0]).mean()
            per_class = {}
            for c, name in enumerate(ctx.splits.schema.groups[0].classes):
                mask = synth.labels[:, 0] == c
                if mask.any():
                    per_class[name] = float((pred[mask] == c).mean())
            summary.update(synthetic_label_accuracy=per_class, judge_test_accuracy=float(real_acc),
                           overall=float((pred == synth.labels[:, 0]).mean()) if len(synth) else None)
    return ctx.records.done("judge")
