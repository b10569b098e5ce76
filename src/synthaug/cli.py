"""The ``synthaug`` command: one sub-command per stage, ``run`` for a whole experiment, and ``demo``; a thin layer
over the runner (:mod:`synthaug.runner`) that parses arguments, takes the run folder's lock and prints."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from importlib import resources
from pathlib import Path

from synthaug.config import ExperimentConfig, load_config
from synthaug.errors import ConfigError, UserError


# Modules that add their own sub-commands: each has ``add_parser(subparsers)`` and keeps heavy imports inside the
# command function, so ``synthaug --help`` stays instant.
SUBCOMMAND_MODULES: list[str] = ["synthaug.tuning.cli", "synthaug.report.cli", "synthaug.evaluate.fewshot_protocol",
                                  "synthaug.clean"]


def _demo_config() -> Path:
    return Path(str(resources.files("synthaug") / "configs" / "demo.yaml"))


def _add_config_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    if optional:
        p.add_argument("config", nargs="?", help="experiment YAML (default: the built-in demo)")
    else:
        p.add_argument("config", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; values parsed as YAML)")
    _add_wait_arg(p)
    p.add_argument("--keep-stale", action="store_true",
                   help="keep a redone stage's previous folder as <stage>.stale-<hash> (default: deleted once the new "
                        "one is complete; `synthaug clean RUN_DIR` removes kept ones)")


def _add_wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="when another synthaug process is writing the run folder, wait for it to finish (default: "
                        "refuse at once, naming its pid and command)")


def _add_force_redo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-redo", action="append", default=[], metavar="STAGE",
                   help="redo this trained stage although it was made with other inputs (default: refuse, naming "
                        "it): a stage folder as the refusal names it (generator, train/<arm>/seed<k>), "
                        "train/<arm> for every seed, or a glob such as 'train/*' (repeatable); the stages trained "
                        "on it are redone too")


def _load(args) -> ExperimentConfig:
    """The validated config; imports no torch, so a bad config is reported at once."""
    return load_config(args.config or _demo_config(), args.overrides)


# commands that may only read the run folder (stats on a finished run): they take the write lock at their
# first write, not at the start
READ_FIRST = {"stats"}


def _open(args):
    """The run context of the command's config, holding the run folder's write lock for the whole command (see
    :mod:`synthaug.runlock`): from the start when the run folder exists (so a second writer is refused before it
    loads anything), else from its first write."""
    from synthaug.runlock import command_lock

    cfg = _load(args)  # validated before torch is imported
    # rank 0 of an `accelerate launch` (RANK, as torchrun sets it) or a plain process: refused before torch loads
    lock = command_lock(cfg.run_dir, wait=getattr(args, "wait", False), on_exit=getattr(args, "on_exit", None),
                        now=False if getattr(args, "command", None) in READ_FIRST else None)
    from synthaug.runner import open_run

    ctx = open_run(cfg, lock=lock)  # takes the lock (rank 0 alone) before its first write
    ctx.records.redo_policy(keep_stale=getattr(args, "keep_stale", False))
    return ctx


def cmd_stats(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.data.longtail import official_train_indices, training_subset_sha256
    from synthaug.runner.data import data_stage

    planned = _planned_counts(ctx)  # a plan that cannot work (an unknown class, ...) is named before any write
    print(data_stage(ctx).format())
    classes = ctx.splits.schema.groups[0].classes
    shown = [f"{classes[c]}: {n:,}" for c, n in enumerate(planned.tolist()) if n]
    print(f"\nGeneration plan: {int(planned.sum()):,} synthetic images ({ctx.cfg.plan.strategy}"
          f"{'' if len(ctx.splits.schema.groups) == 1 else ', first label group'}): "
          f"{', '.join(shown[:12]) or 'none'}{' ...' if len(shown) > 12 else ''}")
    indices = official_train_indices(ctx.splits.train.ids)  # sources with official training indices (CIFAR)
    if indices is not None:
        print(f"training subset sha256: {training_subset_sha256(indices)}")
    print(f"\nBar chart: {ctx.dir / 'data' / 'class_counts.png'}")
    if ctx.splits.train.skipped:
        print(f"Skipped {len(ctx.splits.train.skipped)} bad image(s):")
        for s in ctx.splits.train.skipped:
            print(f"  {s}")


def _planned_counts(ctx):
    """The images the plan generates per class of the first label group (over-generated ones included), checked
    as the plan is (size bound, class names, caption template) without building its items: ``stats`` of a plan
    of 10^7 items takes the memory of its class counts alone."""
    from synthaug.plan import generation_counts, rare_attribute_counts

    p, train = ctx.cfg.plan, ctx.splits.train
    if p.strategy == "rare-attributes":
        return rare_attribute_counts(ctx.splits.schema, train.labels, train.ids, seed=ctx.cfg.seed,
                                     thresholds=ctx.thresholds, rare_shots=p.rare_shots, per_source=p.per_source,
                                     total=p.total, template=p.caption_template)[0]
    return generation_counts(ctx.plan_counts, strategy=p.strategy, overgenerate=p.overgenerate, n_train=len(train))


def cmd_generate(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.runner import preflight
    from synthaug.runner.generate import synthetic_stage

    preflight(ctx, [], generator=True, force_redo=args.force_redo)
    store = synthetic_stage(ctx)
    if ctx.is_main:  # under accelerate launch: one line, not one per process
        print(f"{len(store)} synthetic images in {store.root} (manifest: {store.metadata_path})")


def cmd_filter(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.filters.decisions import format_summary
    from synthaug.runner.filter import filter_stage
    from synthaug.utils import read_json

    record = filter_stage(ctx)
    print(format_summary(record, read_json(ctx.dir / "filter" / "summary.json")["classes"]))
    print(f"Decisions per image: {ctx.dir / 'filter' / 'decisions.jsonl'}")


def _selected_arms(cfg: ExperimentConfig, names):
    known = [a.name for a in cfg.arms]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"Unknown arm(s) {unknown}; arms in this config: {known}")
    return [a for a in cfg.arms if not names or a.name in names]


def cmd_train(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.runner import preflight
    from synthaug.runner.arms import train_arm

    arms = _selected_arms(ctx.cfg, args.arm)
    preflight(ctx, arms, force_redo=args.force_redo)  # every arm and seed checked before the first one trains
    for arm in arms:
        for seed in ctx.cfg.seeds:
            done = train_arm(ctx, arm, seed)
            if ctx.is_main:  # under `accelerate launch`, one line per arm, not per process
                print(f"{arm.name} seed {seed}: test accuracy {100 * done['accuracy']:.1f}%  ({ctx.dir / done['folder']})")


def cmd_evaluate(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.report.tables import build_report
    from synthaug.runner.data import data_stage
    from synthaug.runner.train import evaluate_arms

    data_stage(ctx)
    evaluate_arms(ctx)
    print(build_report(ctx.dir)["markdown"])


def cmd_run(args) -> None:
    ctx = _open(args)  # the config is validated before the runner (and torch) is imported
    from synthaug.runner import run_stages

    names = set(args.arm)
    if names:
        _selected_arms(ctx.cfg, list(names))
    report = run_stages(ctx, only=(lambda a: a.name in names) if names else None, force_redo=args.force_redo,
                        keep_stale=args.keep_stale)
    if report is None:  # a process other than the main one under `accelerate launch`
        return
    print()
    print(report["markdown"])
    print(f"Run folder: {ctx.dir}  (report: {ctx.dir / 'report' / 'results.md'})")


def cmd_model_summary(args) -> None:
    """Parameter counts per arm. Works from the classes declared in the config (``data.classes`` or
    ``data.classes_file``) without the dataset on disk and without pretrained weights."""
    cfg = _load(args)  # validated before torch is imported
    from synthaug.runner import open_run
    from synthaug.train import create_classifier, parameter_counts

    ctx = open_run(cfg)  # writes nothing: no lock
    schema, channels, size = ctx.model_inputs()
    for arm in _selected_arms(cfg, args.arm):
        tcfg = cfg.arm_train(arm)
        model_cfg = tcfg.model.model_copy(update={"pretrained": False, "weights": None})  # counts need no weights
        model = create_classifier(model_cfg, schema, channels)
        trainable, total = parameter_counts(model)
        shape = f"{channels}×{size}×{size}" if (size := tcfg.image_size or size) else f"{channels} channels"
        print(f"{arm.name}: {tcfg.model.name} (freeze={tcfg.model.freeze}, head={tcfg.model.head_hidden}) on "
              f"{shape}, outputs {schema.group_sizes}: {trainable:,} trainable / {total:,} total parameters")


def cmd_list(args) -> None:
    import synthaug.generators  # noqa: F401  (registers generators)
    from synthaug.data.sources import SOURCES
    from synthaug.filters.config import FILTERS
    from synthaug.generators import GENERATORS
    from synthaug.train.augment import AUGMENTS
    from synthaug.train.batch_composition import BATCH_COMPOSITION
    from synthaug.train.losses import LOSSES
    from synthaug.train.mixup import MIXUP_CUTMIX

    registries = {"generators": GENERATORS, "losses": LOSSES, "mixing": BATCH_COMPOSITION, "augment": AUGMENTS,
                  "batch-mix": MIXUP_CUTMIX, "sources": SOURCES,
                  "filters": FILTERS}
    for kind in [args.kind] if args.kind else registries:
        print(f"{kind}: {', '.join(registries[kind].names())}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthaug", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stats", help="class counts, imbalance ratio, many/medium/few groups, bar chart")
    _add_config_args(p)
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("generate", help="fit the generator (if needed) and fill the synthetic store")
    _add_config_args(p)
    _add_force_redo_arg(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("filter", help="keep / reject every generated image with the configured filters (no "
                       "regeneration; rejected images stay on disk)")
    _add_config_args(p)
    p.set_defaults(func=cmd_filter)
    p = sub.add_parser("train", help="train the classifier arms (all, or --arm NAME ...)")
    _add_config_args(p)
    p.add_argument("--arm", action="append", default=[], help="train only this arm (repeatable)")
    _add_force_redo_arg(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate trained classifiers on the test split and print the table")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("run", help="run a whole experiment (skips finished stages, resumes interrupted ones)")
    _add_config_args(p)
    p.add_argument("--arm", action="append", default=[], help="run only this arm (repeatable)")
    _add_force_redo_arg(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="the built-in experiment: MNIST-LT (ρ=100) + class-conditional DDPM")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_wait_arg(p)
    p.set_defaults(func=cmd_run, config=None, arm=[], force_redo=[], keep_stale=False)
    p = sub.add_parser("model-summary", help="trainable / total parameter counts of each arm's classifier")
    _add_config_args(p)
    p.add_argument("--arm", action="append", default=[])
    p.set_defaults(func=cmd_model_summary)
    for module in SUBCOMMAND_MODULES:  # sub-commands that live beside their stage (each module imports no torch)
        importlib.import_module(module).add_parser(sub)
    p = sub.add_parser("list", help="registered generators, losses, mixing (batch composition), presets, batch-mix "
                                    "(MixUp / CutMix), sources, filters")
    p.add_argument("kind", nargs="?", choices=["generators", "losses", "mixing", "augment", "batch-mix", "sources",
                                                "filters"])
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with contextlib.ExitStack() as args.on_exit:  # releases the run folder's lock, if the command took it
            args.func(args)
    except UserError as e:  # a bad config, data file, setting or path: one line; anything else is a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full disk, a permission, a file where a folder should be: one line
        from synthaug.runlock import io_problem

        if (problem := io_problem(e)) is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
