"""Evaluation stages of an experiment, each a function of an :class:`~synthaug.experiment.Experiment` that
writes JSON/CSV/PNG under ``runs/<name>/evaluation/<study>/`` with the runner's ``done.json`` records (a
finished study is skipped on re-run; one whose inputs changed is redone, the old folder kept aside).

A study that does not apply to a run (no generated arm, several label groups, a generator without a
class-agnostic control) is not silently dropped: ``evaluation/<study>/skipped.json`` says why, and the report
shows it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import numpy as np

from synthaug.config import ArmConfig, fingerprint
from synthaug.errors import SettingError
from synthaug.evaluate.config import STUDY_NAMES
from synthaug.train.config import PERFORMANCE  # training fields in no fingerprint
from synthaug.utils import read_json, write_json

if TYPE_CHECKING:
    from synthaug.experiment import Experiment

log = logging.getLogger(__name__)


class StudySkipped(Exception):
    """A study that does not apply to this run; the message says why."""


# ---------------------------------------------------------------------------------------------- shared
def baseline_arm(exp: Experiment) -> ArmConfig:
    """The real-only arm whose training settings every study uses (``evaluation.baseline_arm``; default
    ``real-ce`` when it is a real-only arm, else the first real-only arm)."""
    name = exp.cfg.evaluation.baseline_arm
    real_only = [a for a in exp.cfg.arms if a.synthetic == "none"]
    if name is not None:
        arm = next((a for a in exp.cfg.arms if a.name == name), None)
        if arm is None or arm.synthetic != "none":
            raise SettingError(f"evaluation.baseline_arm {name!r} must name an arm with synthetic: none; such arms: "
                               f"{[a.name for a in real_only]}.")
        return arm
    if not real_only:
        raise StudySkipped("the config has no real-only arm (synthetic: none) to take training settings from")
    return next((a for a in real_only if a.name == "real-ce"), real_only[0])


def study_seeds(exp: Experiment) -> list[int]:
    """``evaluation.seeds``, else the experiment's first seed (each study trains one classifier per seed)."""
    return exp.cfg.evaluation.seeds or exp.cfg.seeds[:1]


def _train_parts(exp: Experiment, arm: ArmConfig) -> dict:
    return exp.cfg.arm_train(arm).model_dump(mode="json", exclude=PERFORMANCE)


def _needs_generated(exp: Experiment) -> None:
    if not any(a.synthetic == "generated" for a in exp.cfg.arms):
        raise StudySkipped("no arm uses the generated set (synthetic: generated), so none was made")


def _needs_single_label(exp: Experiment, study: str) -> None:
    if not exp.splits.schema.is_single_label:
        raise StudySkipped(f"the {study} study plans per-class counts of single-label data; this data has "
                           f"{len(exp.splits.schema.groups)} label groups")


def _train_seeds(exp: Experiment, rel: str, parts: dict, train, synthetic, cfg) -> list[dict]:
    """Trains and tests one classifier per study seed under ``rel/seed<k>``; returns the finished records."""
    from synthaug.evaluate.studies import train_and_test

    records = []
    for seed in study_seeds(exp):
        folder_rel = f"{rel}/seed{seed}"
        with exp._stage(folder_rel, {**parts, "seed": seed}, redo=True) as summary:
            if summary is not None:
                write_json(exp.dir / folder_rel / "train_config.json", cfg.model_dump(mode="json"))
                metrics = train_and_test(train, synthetic, cfg, exp.dir / folder_rel, test=exp.splits.test,
                                         train_counts=exp.train_counts, thresholds=exp.thresholds,
                                         val=exp.splits.val, device=exp.device, seed=seed, progress=exp.cfg.progress)
                summary.update(folder=folder_rel, accuracy=metrics["accuracy"], real=len(train),
                               synthetic=0 if synthetic is None else len(synthetic))
        records.append(read_json(exp.dir / folder_rel / "done.json"))
    return records


def _per_class(exp: Experiment, folders: list[str]) -> dict[str, float | None]:
    """Mean per-class test accuracy (first label group) over the ``metrics.json`` of ``folders``."""
    runs = [next(iter(read_json(exp.dir / f / "metrics.json")["groups"].values()))["per_class"] for f in folders]
    out = {}
    for c in runs[0]:
        values = [r[c] for r in runs if r.get(c) is not None]
        out[c] = float(np.mean(values)) if values else None
    return out


def _baseline_folders(exp: Experiment) -> list[str]:
    arm = baseline_arm(exp)
    return [exp.train_arm(arm, seed)["folder"] for seed in study_seeds(exp)]


def _study_store(exp: Experiment, rel: str, counts: np.ndarray):
    """A synthetic set of per-class ``counts`` from the experiment's generator under ``rel`` (item ids and seeds
    as in the main plan, so an item both plans share is the same image)."""
    from synthaug.generators import fill_store
    from synthaug.plan import make_items
    from synthaug.store import SyntheticStore

    generator = exp.fit_generator()
    items = make_items(exp.splits.schema, counts, seed=exp.cfg.seed)
    parts = {**exp._synthetic_parts, "plan": fingerprint([it.to_dict() for it in items])}
    with exp._stage(rel, parts, redo=True) as summary:
        store = exp.dir / rel
        if summary is not None:
            made = fill_store(generator, items, SyntheticStore(store, exp.splits.schema),
                              batch_size=exp.cfg.plan.batch_size, progress=exp.cfg.progress)
            summary.update(planned=len(items), generated_now=made, counts=np.asarray(counts).tolist())
    images = SyntheticStore(exp.dir / rel, exp.splits.schema).load(mode=exp.splits.train.mode,
                                                                   ids=[it.item_id for it in items])
    return images, fingerprint(parts)


# ---------------------------------------------------------------------------------------------- studies
def samples_stage(exp: Experiment) -> dict:
    """``evaluation/samples``: real vs synthetic counts per class (``counts.json``) and a grid of real training
    images beside synthetic ones per class (``real_vs_synthetic.png``; top and bottom classes beyond 50)."""
    from synthaug.report.plots import real_vs_synthetic_grid

    _needs_generated(exp)
    parts = {"data": exp.data_fp, "synthetic": exp.synthetic_set_fp}
    folder = exp.dir / "evaluation" / "samples"
    with exp._stage("evaluation/samples", parts, redo=True) as summary:
        if summary is not None:
            synth = exp.synthetic_images()
            classes = list(exp.splits.schema.groups[0].classes)
            real_counts = exp.train_counts[0].tolist()
            synth_counts = np.bincount(synth.labels[:, 0], minlength=len(classes)).tolist()
            write_json(folder / "counts.json", {"classes": classes, "real": real_counts, "synthetic": synth_counts})
            real_vs_synthetic_grid(exp.splits.train, synth, folder / "real_vs_synthetic.png",
                                   top_k=exp.cfg.evaluation.report_top_k)
            summary.update(synthetic=len(synth))
    return read_json(folder / "done.json")


def fidelity_stage(exp: Experiment) -> dict:
    """``evaluation/fidelity/<extractor>``: FID, KID, precision/recall of the synthetic set against the real
    test images (overall and per class), the same for real training vs test images as a reference (what
    real images of these counts score), and the memorisation check against the real training images."""
    from synthaug.evaluate.fidelity import fidelity, write_fidelity_csv
    from synthaug.evaluate.memorisation import closest_pairs_image, memorisation, write_memorisation_csv
    from synthaug.imaging import load_tensor
    from synthaug.train.loop import image_size_of

    _needs_generated(exp)
    fc = exp.cfg.evaluation.fidelity
    extractor, source_fp = _extractor(exp)
    rel = f"evaluation/fidelity/{fc.extractor}"
    folder = exp.dir / rel
    parts = {"data": exp.data_fp, "synthetic": exp.synthetic_set_fp, "extractor": [fc.extractor, source_fp],
             "settings": fc.model_dump(mode="json", exclude={"pairs"}), "seed": exp.cfg.seed}
    with exp._stage(rel, parts, redo=True) as summary:
        if summary is not None:
            train, test, synth = exp.splits.train, exp.splits.test, exp.synthetic_images()
            classes = list(train.schema.groups[0].classes)
            f_train, f_test, f_synth = extractor(train), extractor(test), extractor(synth)
            options = {"extractor": extractor.label, "k": fc.k, "kid_subset_size": fc.kid_subset_size,
                       "kid_subsets": fc.kid_subsets, "seed": exp.cfg.seed}
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


def cas_stage(exp: Experiment) -> list[dict]:
    """``evaluation/cas/seed<k>``: the baseline arm's classifier trained on the synthetic set alone, tested on
    the real test images."""
    from synthaug.evaluate.studies import classification_accuracy_score, with_mixing

    _needs_generated(exp)
    arm = baseline_arm(exp)
    cfg = with_mixing(exp.cfg.arm_train(arm), "real-only")
    records = []
    for seed in study_seeds(exp):
        rel = f"evaluation/cas/seed{seed}"
        parts = {"synthetic": exp.synthetic_set_fp, "data": exp.data_fp, "train": _train_parts(exp, arm), "seed": seed}
        with exp._stage(rel, parts, redo=True) as summary:
            if summary is not None:
                synth = exp.synthetic_images()
                metrics = classification_accuracy_score(
                    synth, cfg, exp.dir / rel, test=exp.splits.test, train_counts=exp.train_counts,
                    thresholds=exp.thresholds, device=exp.device, seed=seed, progress=exp.cfg.progress)
                summary.update(folder=rel, accuracy=metrics["accuracy"], synthetic=len(synth), arm=arm.name,
                               trained_classes=metrics["trained_classes"])
        records.append(read_json(exp.dir / rel / "done.json"))
    return records


def oracle_stage(exp: Experiment) -> list[dict]:
    """``evaluation/oracle/seed<k>``: the baseline arm's classifier on the balanced real pool (the training split
    before it was long-tailed): the upper bound of the gap-closed share. The pool serves nothing else."""
    arm = baseline_arm(exp)
    exp.splits  # noqa: B018  (sets exp.balanced_pool)
    if exp.cfg.data.longtail is None:
        raise StudySkipped("data.longtail is not set, so the training split is the whole real pool already")
    parts = {"data": exp.data_fp, "train": _train_parts(exp, arm), "arm": arm.name}
    return _train_seeds(exp, "evaluation/oracle", parts, exp.balanced_pool, None, exp.cfg.arm_train(arm))


def replacement_stage(exp: Experiment) -> dict:
    """``evaluation/replacement``: for every x in ``evaluation.replacement.percents``, x % of every class's real
    training images replaced by synthetic images of the class (same class sizes), trained with the baseline
    arm's settings; ``replacement.csv`` has the test accuracy per x (0 % = the baseline arm)."""
    import csv

    from synthaug.evaluate.studies import replace_real, replacement_counts, with_mixing

    _needs_generated(exp)
    _needs_single_label(exp, "replacement")
    rc, arm = exp.cfg.evaluation.replacement, baseline_arm(exp)
    need = replacement_counts(exp.train_counts[0], max(rc.percents))
    synth, synth_fp = _study_store(exp, "evaluation/replacement/synthetic", need)
    cfg = with_mixing(exp.cfg.arm_train(arm), "combined")
    rows = [{"percent": 0.0, "replaced": 0, "folders": _baseline_folders(exp)}]
    for percent in rc.percents:
        kept, taken = replace_real(exp.splits.train, synth, percent, seed=exp.cfg.seed)
        parts = {"data": exp.data_fp, "synthetic": synth_fp, "train": _train_parts(exp, arm), "percent": percent}
        records = _train_seeds(exp, f"evaluation/replacement/p{percent:g}", parts, kept, taken, cfg)
        rows.append({"percent": percent, "replaced": len(taken), "folders": [r["folder"] for r in records],
                     "replaced_per_class": replacement_counts(exp.train_counts[0], percent).tolist()})
    for row in rows:
        accs = [read_json(exp.dir / f / "metrics.json")["accuracy"] for f in row["folders"]]
        row.update(accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                   seeds=len(accs), per_class=_per_class(exp, row["folders"]))
    folder = exp.dir / "evaluation" / "replacement"
    result = {"arm": arm.name, "seeds": study_seeds(exp), "rows": rows,
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


def targeted_stage(exp: Experiment) -> dict:
    """``evaluation/targeted``: ``count`` synthetic images added to each targeted class (default: the two
    rarest), against the baseline arm and a control of as many pseudo-labelled unconditional samples."""
    from synthaug.evaluate.studies import rarest_classes, with_mixing
    from synthaug.generators import create_generator, fill_store
    from synthaug.plan import unconditional_items
    from synthaug.store import SyntheticStore

    _needs_generated(exp)
    _needs_single_label(exp, "targeted-classes")
    tc, arm = exp.cfg.evaluation.targeted, baseline_arm(exp)
    group = exp.splits.schema.groups[0]
    if tc.classes is None:
        targets = rarest_classes(exp.train_counts[0], tc.rarest)
    else:
        unknown = [c for c in tc.classes if c not in group.classes]
        if unknown:
            raise SettingError(f"evaluation.targeted.classes {unknown} are not classes of the data; classes: "
                               f"{list(group.classes)[:20]}")
        targets = [group.index(c) for c in tc.classes]
    counts = np.zeros(len(group.classes), dtype=np.int64)
    counts[targets] = tc.count
    synth, synth_fp = _study_store(exp, "evaluation/targeted/synthetic", counts)
    cfg = with_mixing(exp.cfg.arm_train(arm), "combined")
    base = {"data": exp.data_fp, "train": _train_parts(exp, arm)}
    targeted = _train_seeds(exp, "evaluation/targeted/train-targeted", {**base, "synthetic": synth_fp},
                            exp.splits.train, synth, cfg)
    result = {"arm": arm.name, "seeds": study_seeds(exp), "classes": [group.classes[c] for c in targets],
              "count_per_class": tc.count, "real_only": _per_class(exp, _baseline_folders(exp)),
              "targeted": _per_class(exp, [r["folder"] for r in targeted]), "control": None, "control_note": None}
    for key, folders in (("real_only", _baseline_folders(exp)), ("targeted", [r["folder"] for r in targeted])):
        result[f"{key}_accuracy"] = float(np.mean([read_json(exp.dir / f / "metrics.json")["accuracy"] for f in folders]))
    labellers = [a.name for a in exp.cfg.arms if a.synthetic == "none"]
    if exp.pseudo_control is None:
        result["control_note"] = (f"generator {exp.cfg.generator.name!r} cannot draw class-agnostic images, so the "
                                  "pseudo-labelled control was left out")
    elif exp.cfg.pseudo.classifier_arm not in labellers:
        result["control_note"] = (f"pseudo.classifier_arm {exp.cfg.pseudo.classifier_arm!r} is not a real-only arm "
                                  f"of this config ({labellers}), so no classifier labels the control; left out")
    else:
        total = int(counts.sum())
        labeller = exp.cfg.arm(exp.cfg.pseudo.classifier_arm)
        labeller_dir = exp.dir / exp.train_arm(labeller, exp.cfg.seeds[0])["folder"] / "model"
        parts = {**exp._synthetic_parts, "count": total, "labeller": exp._arm_fp(labeller, exp.cfg.seeds[0])}
        rel = "evaluation/targeted/control-set"
        exp.fit_generator()
        with exp._stage(rel, parts, redo=True) as summary:
            if summary is not None:
                g = exp.cfg.generator
                pseudo = create_generator(
                    "pseudo-label", {"classifier": str(labeller_dir), "base": g.name, "base_params": g.params,
                                     "base_workdir": str(exp.dir / "generator")},
                    exp.splits.schema, device=exp.device, workdir=exp.dir / rel, seed=exp.cfg.seed,
                    progress=exp.cfg.progress)
                made = fill_store(pseudo, unconditional_items(total, seed=exp.cfg.seed),
                                  SyntheticStore(exp.dir / rel, exp.splits.schema),
                                  batch_size=exp.cfg.plan.batch_size, progress=exp.cfg.progress)
                summary.update(planned=total, generated_now=made, control=exp.pseudo_control)
        control_set = SyntheticStore(exp.dir / rel, exp.splits.schema).load(mode=exp.splits.train.mode)
        control = _train_seeds(exp, "evaluation/targeted/train-control", {**base, "synthetic": fingerprint(parts)},
                               exp.splits.train, control_set, cfg)
        result["control"] = _per_class(exp, [r["folder"] for r in control])
        result["control_accuracy"] = float(np.mean([r["accuracy"] for r in control]))
        result["control_label_counts"] = np.bincount(control_set.labels[:, 0], minlength=len(group.classes)).tolist()
        result["control_note"] = f"{total} {exp.pseudo_control}"
    write_json(exp.dir / "evaluation" / "targeted" / "targeted.json", result)
    return result


def _extractor(exp: Experiment):
    """The fidelity extractor and the fingerprint of its source (the baseline arm's classifier by default)."""
    from synthaug.evaluate.features import create_extractor

    fc = exp.cfg.evaluation.fidelity
    if fc.extractor == "classifier" and fc.extractor_source is None:
        arm, seed = baseline_arm(exp), study_seeds(exp)[0]
        folder = exp.dir / exp.train_arm(arm, seed)["folder"] / "model"
        extractor = create_extractor("classifier", folder, device=exp.device)
        extractor.source = str(folder.relative_to(exp.dir))
        return extractor, exp._arm_fp(arm, seed)
    return create_extractor(fc.extractor, fc.extractor_source, device=exp.device), fc.extractor_source


def few_shot_stage(exp: Experiment) -> dict:
    """``evaluation/few_shot``: k real training images per class, a frozen backbone (the fidelity extractor) with
    a linear last layer, the best validation accuracy across epochs, mean ± std over trials, with and without
    synthetic images of the class."""
    import csv

    from synthaug.evaluate.studies import few_shot

    _needs_single_label(exp, "few-shot")
    fs = exp.cfg.evaluation.few_shot
    if not len(exp.splits.val):
        raise StudySkipped("the few-shot protocol reports validation accuracy, but the validation split is empty "
                           "(data.val_per_class)")
    has_synthetic = any(a.synthetic == "generated" for a in exp.cfg.arms)
    extractor, source_fp = _extractor(exp)
    parts = {"data": exp.data_fp, "synthetic": exp.synthetic_set_fp if has_synthetic else None,
             "extractor": [extractor.name, source_fp], "settings": fs.model_dump(mode="json"), "seed": exp.cfg.seed}
    folder = exp.dir / "evaluation" / "few_shot"
    with exp._stage("evaluation/few_shot", parts, redo=True) as summary:
        if summary is not None:
            train, val = exp.splits.train, exp.splits.val
            synth = exp.synthetic_images() if has_synthetic else None
            rows = few_shot(extractor(train), train.labels[:, 0], extractor(val), val.labels[:, 0],
                            len(train.schema.groups[0].classes), shots=fs.shots, trials=fs.trials, epochs=fs.epochs,
                            lr=fs.lr, seed=exp.cfg.seed, synth_x=None if synth is None else extractor(synth),
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


STUDIES: dict[str, Callable[[Experiment], object]] = dict(zip(STUDY_NAMES, (
    samples_stage, fidelity_stage, cas_stage, oracle_stage, replacement_stage, targeted_stage, few_shot_stage)))


def _enabled(exp: Experiment, study: str) -> bool:
    section = getattr(exp.cfg.evaluation, study, None)
    return section is None or section.enabled


def run_evaluation(exp: Experiment, studies: list[str] | None = None) -> dict[str, str]:
    """Runs the enabled studies (or ``studies``) in order; returns ``{study: "done" | "skipped: <reason>"}``.

    A study that does not apply writes ``evaluation/<study>/skipped.json`` with the reason (and logs it).
    """
    if not exp.cfg.evaluation.enabled and studies is None:
        return {}
    unknown = sorted(set(studies or []) - set(STUDIES))
    if unknown:
        raise SettingError(f"Unknown studies {unknown}; studies: {', '.join(STUDIES)}.")
    status = {}
    for name, stage in STUDIES.items():
        if (studies is not None and name not in studies) or (studies is None and not _enabled(exp, name)):
            continue
        skipped = exp.dir / "evaluation" / name / "skipped.json"
        try:
            stage(exp)
            skipped.unlink(missing_ok=True)
            status[name] = "done"
        except StudySkipped as e:
            log.warning("Study %s skipped: %s.", name, e)
            write_json(skipped, {"study": name, "reason": str(e)})
            status[name] = f"skipped: {e}"
    return status
