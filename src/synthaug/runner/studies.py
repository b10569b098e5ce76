"""The evaluation studies of a run (``evaluation:``), each a stage under ``evaluation/<study>/`` with its own
records (a finished study is skipped on re-run; one whose inputs changed is redone, the old folder kept aside):
samples, fidelity (FID/KID/precision-recall and memorisation), CAS, oracle, replacement, targeted classes and
few-shot. The pure parts (fidelity maths, the replacement and few-shot protocols, CAS training) live in
:mod:`synthaug.evaluate`; this module resolves their inputs from the run context.

A study that does not apply to a run (no generated arm, several label groups, a generator without a
class-agnostic control) is not silently dropped: ``evaluation/<study>/skipped.json`` says why, and the report
shows it.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from synthaug.config import fingerprint
from synthaug.errors import SettingError
from synthaug.evaluate.config import STUDY_NAMES
from synthaug.runner.baseline import (
    StudySkipped, baseline_arm, baseline_folders, fidelity_extractor, study_seeds,
)
from synthaug.runner.context import RunContext
from synthaug.runner.generate import study_set, synthetic_images
from synthaug.runner.pseudo import pseudo_labelled_set
from synthaug.runner.train import train_arm
from synthaug.utils import read_json, write_json

log = logging.getLogger(__name__)


def _needs_generated(ctx: RunContext) -> None:
    if not any(a.synthetic == "generated" for a in ctx.cfg.arms):
        raise StudySkipped("no arm uses the generated set (synthetic: generated), so none was made")


def _needs_single_label(ctx: RunContext, study: str) -> None:
    if not ctx.splits.schema.is_single_label:
        raise StudySkipped(f"the {study} study plans per-class counts of single-label data; this data has "
                           f"{len(ctx.splits.schema.groups)} label groups")


def _train_seeds(ctx: RunContext, rel: str, parts: dict, train, synthetic, cfg) -> list[dict]:
    """Trains and tests one classifier per study seed under ``rel/seed<k>``; returns the finished records."""
    from synthaug.evaluate.studies import train_and_test

    records = []
    for seed in study_seeds(ctx.cfg):
        folder_rel = f"{rel}/seed{seed}"
        with ctx.records.record(folder_rel, {**parts, "seed": seed}, redo=True) as summary:
            if summary is not None:
                write_json(ctx.dir / folder_rel / "train_config.json", cfg.model_dump(mode="json"))
                metrics = train_and_test(train, synthetic, cfg, ctx.dir / folder_rel, test=ctx.splits.test,
                                         train_counts=ctx.train_counts, thresholds=ctx.thresholds,
                                         val=ctx.splits.val, device=ctx.device, seed=seed, progress=ctx.cfg.progress)
                summary.update(folder=folder_rel, accuracy=metrics["accuracy"], real=len(train),
                               synthetic=0 if synthetic is None else len(synthetic))
        records.append(ctx.records.done(folder_rel))
    return records


def _per_class(ctx: RunContext, folders: list[str]) -> dict[str, float | None]:
    """Mean per-class test accuracy (first label group) over the ``metrics.json`` of ``folders``."""
    runs = [next(iter(read_json(ctx.dir / f / "metrics.json")["groups"].values()))["per_class"] for f in folders]
    out = {}
    for c in runs[0]:
        values = [r[c] for r in runs if r.get(c) is not None]
        out[c] = float(np.mean(values)) if values else None
    return out


def samples_stage(ctx: RunContext) -> dict:
    """``evaluation/samples``: real vs synthetic counts per class (``counts.json``) and a grid of real training
    images beside synthetic ones per class (``real_vs_synthetic.png``; top and bottom classes beyond 50)."""
    from synthaug.report.plots import real_vs_synthetic_grid

    _needs_generated(ctx)
    parts = {"data": ctx.data_fp, "synthetic": ctx.synthetic_set_fp}
    folder = ctx.dir / "evaluation" / "samples"
    with ctx.records.record("evaluation/samples", parts, redo=True) as summary:
        if summary is not None:
            synth = synthetic_images(ctx)
            classes = list(ctx.splits.schema.groups[0].classes)
            real_counts = ctx.train_counts[0].tolist()
            synth_counts = np.bincount(synth.labels[:, 0], minlength=len(classes)).tolist()
            write_json(folder / "counts.json", {"classes": classes, "real": real_counts, "synthetic": synth_counts})
            real_vs_synthetic_grid(ctx.splits.train, synth, folder / "real_vs_synthetic.png",
                                   top_k=ctx.cfg.evaluation.report_top_k)
            summary.update(synthetic=len(synth))
    return read_json(folder / "done.json")


def fidelity_stage(ctx: RunContext) -> dict:
    """``evaluation/fidelity/<extractor>``: FID, KID, precision/recall of the synthetic set against the real
    test images (overall and per class), the same for real training vs test images as a reference (what
    real images of these counts score), and the memorisation check against the real training images."""
    from synthaug.evaluate.fidelity import fidelity, write_fidelity_csv
    from synthaug.evaluate.memorisation import closest_pairs_image, memorisation, write_memorisation_csv
    from synthaug.imaging import load_tensor
    from synthaug.train.loop import image_size_of

    _needs_generated(ctx)
    fc = ctx.cfg.evaluation.fidelity
    extractor, source_fp = fidelity_extractor(ctx)
    rel = f"evaluation/fidelity/{fc.extractor}"
    folder = ctx.dir / rel
    parts = {"data": ctx.data_fp, "synthetic": ctx.synthetic_set_fp, "extractor": [fc.extractor, source_fp],
             "settings": fc.model_dump(mode="json", exclude={"pairs"}), "seed": ctx.cfg.seed}
    with ctx.records.record(rel, parts, redo=True) as summary:
        if summary is not None:
            train, test, synth = ctx.splits.train, ctx.splits.test, synthetic_images(ctx)
            classes = list(train.schema.groups[0].classes)
            f_train, f_test, f_synth = extractor(train), extractor(test), extractor(synth)
            options = {"extractor": extractor.label, "k": fc.k, "kid_subset_size": fc.kid_subset_size,
                       "kid_subsets": fc.kid_subsets, "seed": ctx.cfg.seed}
            result = fidelity(f_test, test.labels[:, 0], f_synth, synth.labels[:, 0], classes, **options)
            reference = fidelity(f_test, test.labels[:, 0], f_train, train.labels[:, 0], classes, **options)
            result["reference"] = "synthetic set vs real test images"
            reference["reference"] = "real training images vs real test images (what real images of these counts score)"
            write_json(folder / "fidelity.json", result)
            write_json(folder / "reference.json", reference)
            write_fidelity_csv(result, folder / "fidelity.csv")
            write_fidelity_csv(reference, folder / "reference.csv")

            size = image_size_of(train)
            pix_train, pix_synth = load_tensor(train, size=size), load_tensor(synth, size=size)
            mem = memorisation(f_synth, pix_synth, synth.labels[:, 0], f_train, pix_train, train.labels[:, 0],
                               classes, extractor=extractor.label, pixel_threshold=fc.pixel_threshold,
                               feature_ratio=fc.feature_ratio)
            write_json(folder / "memorisation.json", mem)
            write_memorisation_csv(mem, folder / "memorisation.csv")
            closest_pairs_image(mem, synth.image, train.image, max_pairs=fc.pairs).save(folder / "closest_pairs.png")
            summary.update(extractor=extractor.label, fid=result["overall"]["fid"],
                           kid=result["overall"]["kid_mean"], near_copy_share=mem["overall"]["near_copy_share"])
    return read_json(folder / "done.json")


def cas_stage(ctx: RunContext) -> list[dict]:
    """``evaluation/cas/seed<k>``: the baseline arm's classifier trained on the synthetic set alone, tested on
    the real test images."""
    from synthaug.evaluate.studies import classification_accuracy_score, with_mixing

    _needs_generated(ctx)
    arm = baseline_arm(ctx.cfg)
    cfg = with_mixing(ctx.cfg.arm_train(arm), "real-only")
    records = []
    for seed in study_seeds(ctx.cfg):
        rel = f"evaluation/cas/seed{seed}"
        parts = {"synthetic": ctx.synthetic_set_fp, "data": ctx.data_fp, "train": ctx.train_part(arm), "seed": seed}
        with ctx.records.record(rel, parts, redo=True) as summary:
            if summary is not None:
                synth = synthetic_images(ctx)
                metrics = classification_accuracy_score(
                    synth, cfg, ctx.dir / rel, test=ctx.splits.test, train_counts=ctx.train_counts,
                    thresholds=ctx.thresholds, device=ctx.device, seed=seed, progress=ctx.cfg.progress)
                summary.update(folder=rel, accuracy=metrics["accuracy"], synthetic=len(synth), arm=arm.name,
                               trained_classes=metrics["trained_classes"])
        records.append(read_json(ctx.dir / rel / "done.json"))
    return records


def oracle_stage(ctx: RunContext) -> list[dict]:
    """``evaluation/oracle/seed<k>``: the baseline arm's classifier on the balanced real pool (the training split
    before it was long-tailed): the upper bound of the gap-closed share. The pool serves nothing else."""
    arm = baseline_arm(ctx.cfg)
    ctx.splits  # noqa: B018  (sets ctx.balanced_pool)
    if ctx.cfg.data.longtail is None:
        raise StudySkipped("data.longtail is not set, so the training split is the whole real pool already")
    parts = {"data": ctx.data_fp, "train": ctx.train_part(arm), "arm": arm.name}
    return _train_seeds(ctx, "evaluation/oracle", parts, ctx.balanced_pool, None, ctx.cfg.arm_train(arm))


def replacement_stage(ctx: RunContext) -> dict:
    """``evaluation/replacement``: for every x in ``evaluation.replacement.percents``, x % of every class's real
    training images replaced by synthetic images of the class (same class sizes), trained with the baseline
    arm's settings; ``replacement.csv`` has the test accuracy per x (0 % = the baseline arm)."""
    import csv

    from synthaug.evaluate.studies import replace_real, replacement_counts, with_mixing

    _needs_generated(ctx)
    _needs_single_label(ctx, "replacement")
    rc, arm = ctx.cfg.evaluation.replacement, baseline_arm(ctx.cfg)
    need = replacement_counts(ctx.train_counts[0], max(rc.percents))
    synth, synth_fp = study_set(ctx, "evaluation/replacement/synthetic", need)
    cfg = with_mixing(ctx.cfg.arm_train(arm), "combined")
    rows = [{"percent": 0.0, "replaced": 0, "folders": baseline_folders(ctx)}]
    for percent in rc.percents:
        kept, taken = replace_real(ctx.splits.train, synth, percent, seed=ctx.cfg.seed)
        parts = {"data": ctx.data_fp, "synthetic": synth_fp, "train": ctx.train_part(arm), "percent": percent}
        records = _train_seeds(ctx, f"evaluation/replacement/p{percent:g}", parts, kept, taken, cfg)
        rows.append({"percent": percent, "replaced": len(taken), "folders": [r["folder"] for r in records],
                     "replaced_per_class": replacement_counts(ctx.train_counts[0], percent).tolist()})
    for row in rows:
        accs = [read_json(ctx.dir / f / "metrics.json")["accuracy"] for f in row["folders"]]
        row.update(accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                   seeds=len(accs), per_class=_per_class(ctx, row["folders"]))
    folder = ctx.dir / "evaluation" / "replacement"
    result = {"arm": arm.name, "seeds": study_seeds(ctx.cfg), "rows": rows,
              "note": "x % of every class's real training images replaced by synthetic ones; test accuracy on real "
                      "test images; 0 % is the baseline arm"}
    write_json(folder / "replacement.json", result)
    with open(folder / "replacement.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["percent", "replaced", "accuracy", "accuracy_std", "seeds"])
        for r in rows:
            writer.writerow([f"{r['percent']:g}", r["replaced"], f"{r['accuracy']:.4f}", f"{r['accuracy_std']:.4f}",
                             r["seeds"]])
    return result


def targeted_stage(ctx: RunContext) -> dict:
    """``evaluation/targeted``: ``count`` synthetic images added to each targeted class (default: the two
    rarest), against the baseline arm and a control of as many pseudo-labelled unconditional samples."""
    from synthaug.evaluate.studies import rarest_classes, with_mixing

    _needs_generated(ctx)
    _needs_single_label(ctx, "targeted-classes")
    tc, arm = ctx.cfg.evaluation.targeted, baseline_arm(ctx.cfg)
    group = ctx.splits.schema.groups[0]
    if tc.classes is None:
        targets = rarest_classes(ctx.train_counts[0], tc.rarest)
    else:
        unknown = [c for c in tc.classes if c not in group.classes]
        if unknown:
            raise SettingError(f"evaluation.targeted.classes {unknown} are not classes of the data; classes: "
                               f"{list(group.classes)[:20]}")
        targets = [group.index(c) for c in tc.classes]
    counts = np.zeros(len(group.classes), dtype=np.int64)
    counts[targets] = tc.count
    synth, synth_fp = study_set(ctx, "evaluation/targeted/synthetic", counts)
    cfg = with_mixing(ctx.cfg.arm_train(arm), "combined")
    base = {"data": ctx.data_fp, "train": ctx.train_part(arm)}
    targeted = _train_seeds(ctx, "evaluation/targeted/train-targeted", {**base, "synthetic": synth_fp},
                            ctx.splits.train, synth, cfg)
    result = {"arm": arm.name, "seeds": study_seeds(ctx.cfg), "classes": [group.classes[c] for c in targets],
              "count_per_class": tc.count, "real_only": _per_class(ctx, baseline_folders(ctx)),
              "targeted": _per_class(ctx, [r["folder"] for r in targeted]), "control": None, "control_note": None}
    for key, folders in (("real_only", baseline_folders(ctx)), ("targeted", [r["folder"] for r in targeted])):
        result[f"{key}_accuracy"] = float(np.mean([read_json(ctx.dir / f / "metrics.json")["accuracy"] for f in folders]))
    labellers = [a.name for a in ctx.cfg.arms if a.synthetic == "none"]
    if ctx.pseudo_control is None:
        result["control_note"] = (f"generator {ctx.cfg.generator.name!r} cannot draw class-agnostic images, so the "
                                  "pseudo-labelled control was left out")
    elif ctx.cfg.pseudo.classifier_arm not in labellers:
        result["control_note"] = (f"pseudo.classifier_arm {ctx.cfg.pseudo.classifier_arm!r} is not a real-only arm "
                                  f"of this config ({labellers}), so no classifier labels the control; left out")
    else:
        total = int(counts.sum())
        labeller, seed = ctx.pseudo_labeller
        labeller_dir = ctx.dir / train_arm(ctx, labeller, seed)["folder"] / "model"
        rel = "evaluation/targeted/control-set"
        control_store = pseudo_labelled_set(ctx, rel, labeller_dir, total)
        control_set = control_store.load(mode=ctx.splits.train.mode)
        control = _train_seeds(ctx, "evaluation/targeted/train-control",
                               {**base, "synthetic": fingerprint(ctx.pseudo_parts(total))}, ctx.splits.train,
                               control_set, cfg)
        result["control"] = _per_class(ctx, [r["folder"] for r in control])
        result["control_accuracy"] = float(np.mean([r["accuracy"] for r in control]))
        result["control_label_counts"] = np.bincount(control_set.labels[:, 0], minlength=len(group.classes)).tolist()
        result["control_note"] = f"{total} {ctx.pseudo_control}"
    write_json(ctx.dir / "evaluation" / "targeted" / "targeted.json", result)
    return result


def few_shot_stage(ctx: RunContext) -> dict:
    """``evaluation/few_shot``: k real training images per class, a frozen backbone (the fidelity extractor) with
    a linear last layer, the best validation accuracy across epochs, mean ± std over trials, with and without
    synthetic images of the class."""
    import csv

    from synthaug.evaluate.studies import few_shot

    _needs_single_label(ctx, "few-shot")
    fs = ctx.cfg.evaluation.few_shot
    if not len(ctx.splits.val):
        raise StudySkipped("the few-shot protocol reports validation accuracy, but the validation split is empty "
                           "(data.val_per_class)")
    has_synthetic = any(a.synthetic == "generated" for a in ctx.cfg.arms)
    extractor, source_fp = fidelity_extractor(ctx)
    parts = {"data": ctx.data_fp, "synthetic": ctx.synthetic_set_fp if has_synthetic else None,
             "extractor": [extractor.name, source_fp], "settings": fs.model_dump(mode="json"), "seed": ctx.cfg.seed}
    folder = ctx.dir / "evaluation" / "few_shot"
    with ctx.records.record("evaluation/few_shot", parts, redo=True) as summary:
        if summary is not None:
            train, val = ctx.splits.train, ctx.splits.val
            synth = synthetic_images(ctx) if has_synthetic else None
            rows = few_shot(extractor(train), train.labels[:, 0], extractor(val), val.labels[:, 0],
                            len(train.schema.groups[0].classes), shots=fs.shots, trials=fs.trials, epochs=fs.epochs,
                            lr=fs.lr, seed=ctx.cfg.seed, synth_x=None if synth is None else extractor(synth),
                            synth_y=None if synth is None else synth.labels[:, 0],
                            synthetic_per_real=fs.synthetic_per_real)
            note = ("best validation accuracy across epochs of a linear probe on frozen features; real validation "
                    "split; the same k real images per trial with and without synthetic ones")
            if extractor.name == "classifier":
                note += ("; the backbone is the baseline classifier trained on the whole long-tailed training split, "
                         "so it saw more than k images per class (an optimistic backbone, not an ImageNet one)")
            write_json(folder / "few_shot.json", {"extractor": extractor.label, "rows": rows, "note": note})
            with open(folder / "few_shot.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["extractor", "shots", "synthetic", "mean", "std", "trials", "real", "synthetic_rows"])
                for r in rows:
                    writer.writerow([extractor.label, r["shots"], r["synthetic"], f"{r['mean']:.4f}", f"{r['std']:.4f}",
                                     len(r["trials"]), r["real"], r["synthetic_rows"]])
            summary.update(extractor=extractor.label)
    return read_json(folder / "few_shot.json")


STUDIES: dict[str, Callable[[RunContext], object]] = dict(zip(STUDY_NAMES, (
    samples_stage, fidelity_stage, cas_stage, oracle_stage, replacement_stage, targeted_stage, few_shot_stage)))


def _enabled(ctx: RunContext, study: str) -> bool:
    section = getattr(ctx.cfg.evaluation, study, None)
    return section is None or section.enabled


def studies_stage(ctx: RunContext, studies: list[str] | None = None) -> dict[str, str]:
    """Runs the enabled studies (or ``studies``) in order; returns ``{study: "done" | "skipped: <reason>"}``.

    A study that does not apply writes ``evaluation/<study>/skipped.json`` with the reason (and logs it).
    """
    if not ctx.cfg.evaluation.enabled and studies is None:
        return {}
    unknown = sorted(set(studies or []) - set(STUDIES))
    if unknown:
        raise SettingError(f"Unknown studies {unknown}; studies: {', '.join(STUDIES)}.")
    status = {}
    for name, stage in STUDIES.items():
        if (studies is not None and name not in studies) or (studies is None and not _enabled(ctx, name)):
            continue
        skipped = ctx.dir / "evaluation" / name / "skipped.json"
        try:
            stage(ctx)
            skipped.unlink(missing_ok=True)
            status[name] = "done"
        except StudySkipped as e:
            log.warning("Study %s skipped: %s.", name, e)
            write_json(skipped, {"study": name, "reason": str(e)})
            status[name] = f"skipped: {e}"
    return status
