"""Sampling speed against label fidelity for a run's trained ``ddpm`` generator (issue 11, part 3).

    .venv/bin/python bench/sampling.py runs/demo [--per-class 50] [--stock-per-class 10] [--compile] [--only TEXT]

Needs a finished run folder with a ``ddpm`` generator and a judge (``make demo`` makes ``runs/demo``). Every
variant samples the same items (the same per-item seeds) with the run's trained model and prints, side by
side in one process:

* images/s (one batch of the run's ``plan.batch_size``, after a warm-up batch; CPU model and threads printed);
* the judge's label accuracy — the share of images that the run's judge (a classifier trained on the
  balanced real pool) reads as their intended class — as the mean over classes, the worst class, and the
  standard error of the mean over images (binomial), so "within 1 point" can be read against the noise;
* speed relative to the stock sampler: diffusers' ``DDPMPipeline``-style 1,000-step ancestral sampling (the
  ``ddpm`` scheduler with every training timestep), at the run's precision — in fp32, diffusers' default,
  the stock sampler is slower still, so the ratio printed is a lower bound.

Variants: the stock sampler, DDIM 10, DPM-Solver++ and UniPC at 4-25 steps (timesteps "trailing", the
default), and for the run's sampler setting: "leading" timesteps (diffusers' DDPMScheduler default) at 8 and
25 steps, without guidance batching, channels-last on and off, fp32 vs bf16 (bf16 only where the CPU runs it natively,
see ``precision: auto``) and ``torch.compile`` (with ``--compile``; compiling takes minutes on 2 cores; its
warm-up samples the timed batch shapes first, so compilation is not timed). ``--only TEXT`` (repeatable) runs
the variants whose label contains TEXT, and the stock sampler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthaug.config import load_config
from synthaug.data.schema import LabeledImages
from synthaug.runner import open_run
from synthaug.generators import create_generator
from synthaug.plan import make_items
from synthaug.train.loop import predict
from synthaug.train.models import load_classifier
from synthaug.torch_utils import cpu_has_native_bf16, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from demo_budget import cpu_model  # noqa: E402


def variants(base: dict, native_bf16: bool, with_compile: bool) -> list[tuple[str, dict, bool]]:
    """(label, generator settings, is_stock) in the order they run."""
    rows = [("stock: ddpm ancestral 1000", {"sampler": "ddpm", "sampling_steps": 1000}, True),
            ("ddim 10", {"sampler": "ddim", "sampling_steps": 10}, False)]
    for sampler in ("dpmsolver++", "unipc"):
        rows += [(f"{sampler} {n}", {"sampler": sampler, "sampling_steps": n}, False) for n in (4, 5, 6, 8, 10, 15, 25)]
    ours = {k: base[k] for k in ("sampler", "sampling_steps", "timestep_spacing")}
    tag = f"{ours['sampler']} {ours['sampling_steps']}"
    rows += [(f"{ours['sampler']} {n}, timesteps \"leading\" (diffusers' DDPMScheduler default)",
              {**ours, "sampling_steps": n, "timestep_spacing": "leading"}, False) for n in (8, 25)]
    rows += [(f"{tag}, two passes (no guidance batching)", {**ours, "guidance_batching": False}, False),
             (f"{tag}, channels_last on", {**ours, "channels_last": True}, False),
             (f"{tag}, channels_last off", {**ours, "channels_last": False}, False),
             (f"{tag}, fp32", {**ours, "precision": "fp32"}, False)]
    if native_bf16:
        rows.append((f"{tag}, bf16", {**ours, "precision": "bf16"}, False))
    if with_compile:
        rows.append((f"{tag}, torch.compile", {**ours, "enable_compile": True}, False))
    return rows


def judge_accuracy(judge, size: int, images, labels: np.ndarray, schema) -> tuple[float, float, float]:
    """(mean over classes, worst class, binomial standard error over images) of the judge's label accuracy."""
    pixels = np.stack([np.asarray(im) for im in images])
    data = LabeledImages(schema=schema, labels=labels[:, None], ids=[str(i) for i in range(len(labels))],
                         pixels=pixels, mode=images[0].mode)
    right = predict(judge, data, size, device=torch.device("cpu")).argmax(1).numpy() == labels
    per_class = [right[labels == c].mean() for c in np.unique(labels)]
    p = right.mean()
    return float(np.mean(per_class)), float(np.min(per_class)), float(np.sqrt(p * (1 - p) / len(right)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder (config.yaml, generator/, judge/model)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class for every variant")
    parser.add_argument("--stock-per-class", type=int, default=10,
                        help="images per class for the 1,000-step stock sampler (its first items)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the variants whose label contains TEXT (and the stock sampler)")
    args = parser.parse_args(argv)

    cfg = load_config(args.run / "config.yaml")
    if cfg.generator.name != "ddpm":
        parser.error(f"{args.run} used generator {cfg.generator.name!r}; this benchmark samples a ddpm model.")
    judge_dir = args.run / "judge" / "model"
    if not (judge_dir / "classifier.json").is_file():
        parser.error(f"{judge_dir} has no judge; finish the run first (synthaug run {args.run / 'config.yaml'}).")
    exp = open_run(cfg)
    # sample the run's trained model as a given checkpoint, so that `precision` (a training field too) can vary
    base = {**exp.generator_config.model_dump(), "checkpoint": str(exp.dir / "generator" / "model")}
    schema = exp.splits.schema
    judge, info = load_classifier(judge_dir)
    native = cpu_has_native_bf16()
    print(f"CPU: {cpu_model()}; native bf16: {native}; torch threads: {torch.get_num_threads()}; "
          f"run: {args.run}; run precision: {resolve_precision(base['precision'], torch.device('cpu'))}; "
          f"guidance {base['guidance_scale']}; judge: {judge_dir} (trained on the balanced real pool)")
    classes = len(schema.groups[0].classes)
    items = make_items(schema, [args.per_class] * classes, seed=12345)
    stock_items = make_items(schema, [args.stock_per_class] * classes, seed=12345)
    batch = cfg.plan.batch_size
    print("| sampler | images | img/s | × stock | judge label accuracy, mean over classes | worst class |")
    print("|---|---|---|---|---|---|")
    stock_rate = None
    for label, settings, stock in variants(base, native, args.compile):
        if args.only and not stock and not any(text in label for text in args.only):
            continue
        gen = create_generator("ddpm", {**base, **settings}, schema, workdir=exp.dir / "bench-sampling",
                               progress=False)
        todo = stock_items if stock else items
        # warm-up: loading, oneDNN kernels; compiled models see each timed batch shape once (a new shape recompiles)
        shapes = {len(todo[i:i + batch]) for i in range(0, len(todo), batch)} if settings.get("enable_compile") else {8}
        for n in sorted(shapes):
            gen.sample(todo[:n])
        images, start = [], time.perf_counter()
        for i in range(0, len(todo), batch):
            images += [g.image for g in gen.sample(todo[i:i + batch])]
        rate = len(todo) / (time.perf_counter() - start)
        stock_rate = rate if stock else stock_rate
        mean, worst, se = judge_accuracy(judge, info["image_size"], images,
                                         np.array([it.labels[0] for it in todo]), schema)
        print(f"| {label} | {len(todo)} | {rate:.2f} | {rate / stock_rate:.0f}× | {100 * mean:.1f} ± {100 * se:.1f} "
              f"| {100 * worst:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
