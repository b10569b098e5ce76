"""One self-contained HTML report of a run folder: ``report/report.html`` with every picture embedded as a
base64 data URI (no network request, no external font or script), plus the PNGs and CSV/Markdown tables beside
it. It renders from the run folder's files only (config, ``data/``, ``train/``, ``judge/``, ``evaluation/``), so
it can be rebuilt from a finished run alone: ``synthaug report RUN_DIR``.

Readable at 10 and at 1,000 classes: beyond 50 classes, per-class tables and pictures show the top and bottom
k classes by training count, and accuracies are aggregated by many/medium/few-shot group.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from synthaug.report import plots
from synthaug.report.results import seed_folders
from synthaug.report.arms import HEADER, arm_rows, display_cells, fmt_pct, markdown
from synthaug.report.tables import filter_columns, filter_shortfall, filter_summary, furthest_short
from synthaug.utils import read_json

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 18px 40px;color:#222;line-height:1.4}
h1{border-bottom:2px solid #4c72b0;padding-bottom:4px}h2{margin-top:34px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12px;display:block;overflow-x:auto;max-width:100%}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f0f3f8}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:4px 0}.note{color:#555;font-size:13px}
.skip{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px}nav a{margin-right:10px}
figure{margin:10px 0}figcaption{font-size:12px;color:#444}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
"""


class _Page:
    """Collects sections and pictures; every picture is copied to ``report/`` and embedded."""

    def __init__(self, run_dir: Path, out: Path, top_k: int):
        self.run_dir, self.out, self.top_k = run_dir, out, top_k
        self.sections: list[tuple[str, str, str]] = []
        self.pictures: list[str] = []

    def section(self, key: str, title: str, body: str) -> None:
        self.sections.append((key, title, body))

    def figure(self, path: Path, caption: str) -> str:
        if not Path(path).is_file():
            return ""
        self.pictures.append(str(path))
        data = base64.b64encode(Path(path).read_bytes()).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self, title: str) -> str:
        nav = " ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in self.sections)
        body = "\n".join(f'<section id="{k}"><h2>{html.escape(t)}</h2>{b}</section>' for k, t, b in self.sections)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
                f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}"
                f'<p class="note">Rendered {time.strftime("%Y-%m-%d %H:%M")} from the files of {html.escape(str(self.run_dir))}.</p>'
                "</body></html>\n")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _write_table(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _mean_per_class(folders: list[Path]) -> dict[str, float | None]:
    runs = [next(iter(read_json(f / "metrics.json")["groups"].values()))["per_class"] for f in folders
            if (f / "metrics.json").is_file()]
    if not runs:
        return {}
    return {c: (float(np.mean(v)) if (v := [r[c] for r in runs if r.get(c) is not None]) else None) for c in runs[0]}


def _skip_notes(run_dir: Path) -> dict[str, str]:
    return {p.parent.name: read_json(p)["reason"] for p in sorted((run_dir / "evaluation").glob("*/skipped.json"))}


# ---------------------------------------------------------------------------------------------- sections
def _data_section(page: _Page, stats: dict, sizes: dict, classes: list[str], counts: np.ndarray) -> None:
    shots = stats["shot_groups"]
    shot_of = {c: s for s, members in shots.items() for c in members}
    body = (f"<p>Training images per class: {int(counts.sum())} in {len(classes)} classes, imbalance ratio "
            f"{stats['imbalance_ratio']:.0f}; many-shot {len(shots['many'])}, medium {len(shots['medium'])}, few "
            f"{len(shots['few'])} classes. Validation {sizes.get('val', '–')} and test {sizes.get('test', '–')} "
            "real images (held out).</p>")
    if len(classes) <= plots.MAX_LABELLED_CLASSES:
        body += _table(["class", "training images", "shot group"], [[c, int(n), shot_of.get(c, "")] for c, n in zip(classes, counts)])
    else:
        body += _table(["shot group", "classes", "training images"],
                       [[s, len(m), int(sum(counts[classes.index(c)] for c in m))] for s, m in shots.items()])
    body += page.figure(page.run_dir / "data" / "class_counts.png", "Training images per class (data/class_counts.png)")
    counts_file = page.run_dir / "evaluation" / "samples" / "counts.json"
    if counts_file.is_file():
        sc = read_json(counts_file)
        png = plots.class_counts_stacked(sc["classes"], sc["real"], sc["synthetic"], page.out / "class_counts_stacked.png")
        body += page.figure(png, f"Real training images and the {sum(sc['synthetic'])} synthetic images added, per class "
                                 "(stacked, head → tail)")
    page.section("data", "Data", body)


def _filters_section(page: _Page) -> None:
    """Per class: generated, rejected by each filter, kept, selected (what arms with use_filters train on),
    target and short; a warning first when the selected set falls short of the plan. Beyond 50 classes, the
    short classes only (the whole table is filter/summary.csv)."""
    summary = filter_summary(page.run_dir)
    if summary is None:
        return
    warning = filter_shortfall(page.run_dir)
    body = ""
    if warning:
        level, text = warning
        body = f"<p class='{'skip' if level == 'Warning' else 'note'}'><b>{level}:</b> {html.escape(text)}</p>"
    cols = filter_columns(summary)
    rows = [r for r in summary["classes"] if r["planned"]]
    note = "every class with a plan"
    if len(summary["classes"]) > plots.MAX_LABELLED_CLASSES:
        rows = furthest_short([r for r in rows if r["target"]])[:page.top_k]
        note = f"the {len(rows)} classes furthest short of their target (all classes: filter/summary.csv)"
    body += _table(["class", *(c.replace("_", " ") for c in cols)],
                   [[r["class"], *(r[c] for c in cols)] for r in rows])
    body += (f"<p class='note'>Synthetic images per class, {note}: generated (the plan × plan.overgenerate), "
             "rejected by each filter, kept by all, selected (the first target-many kept images of the class: what "
             "arms with use_filters train on). Every decision and its reason: filter/decisions.jsonl.</p>")
    page.section("filters", "Filters", body)


def _arms_section(page: _Page, rows: list[dict]) -> None:
    cells = [display_cells(r) for r in rows]
    _write_table(page.out / "arms", HEADER, cells)
    (page.out / "arms.md").write_text(markdown(rows) + "\n")
    body = _table(HEADER, cells)
    body += ("<p class='note'>Test accuracy on the real test split, mean ± sample std over the seeds; many/medium/few: "
             "mean per-class accuracy of the shot group. Gap closed = (arm − best non-generative arm) / (oracle − best "
             "non-generative arm); the oracle is the same classifier trained on the balanced real pool, which serves "
             "nothing but this row. Also in report/arms.csv, arms.md (and results.csv from the runner).</p>")
    page.section("arms", "Arms", body)


def _accuracy_pictures(page: _Page, cfg, rows: list[dict], classes, counts, shot_of) -> None:
    run_dir = page.run_dir
    real = [r for r in rows if r["synthetic"] == "none" and not r["arm"].startswith("oracle")]
    generated = [r for r in rows if r["synthetic"] == "generated"]
    body = ""
    if real:
        baseline = max(real, key=lambda r: r["accuracy"] or 0)
        series = {f"{baseline['arm']} (best real-only)": _mean_per_class(
            seed_folders(run_dir / "train" / baseline["arm"]))}
        if generated:
            best = max(generated, key=lambda r: r["accuracy"] or 0)
            series[f"{best['arm']} (best with synthetic)"] = _mean_per_class(
                seed_folders(run_dir / "train" / best["arm"]))
        oracle = _mean_per_class(seed_folders(run_dir / "evaluation" / "oracle"))
        if oracle:
            series["oracle"] = oracle
        png = plots.per_class_comparison(classes, counts, series, page.out / "per_class_baseline_vs_augmented.png",
                                         shot_of=shot_of, top_k=page.top_k)
        body += page.figure(png, "Per-class test accuracy, baseline vs augmented (mean over seeds; classes head → tail"
                                 + (", aggregated by shot group" if len(classes) > plots.MAX_LABELLED_CLASSES else "") + ")")
        for r in [baseline] + ([best] if generated else []):
            seed0 = next(f / "metrics.json" for f in seed_folders(run_dir / "train" / r["arm"])
                         if (f / "metrics.json").is_file())
            confusion = next(iter(read_json(seed0)["groups"].values()))["confusion"]
            png = plots.confusion_plot(confusion, classes, page.out / f"confusion_{r['arm']}.png",
                                       f"{r['arm']} ({seed0.parent.name}), rows: true class")
            body += page.figure(png, f"Confusion matrix of {r['arm']}, {seed0.parent.name}, real test split")
    body += page.figure(run_dir / "report" / "per_class_accuracy.png", "Per-class accuracy of every arm (report/per_class_accuracy.png)")
    page.section("accuracy", "Per-class accuracy and confusion", body)

    curves = ""
    for arm in cfg.arms:
        for png in [f / "curves.png" for f in seed_folders(run_dir / "train" / arm.name)
                    if (f / "curves.png").is_file()][:1]:
            curves += page.figure(png, f"{arm.name} {png.parent.name}: training and validation loss / accuracy")
    if curves:
        page.section("curves", "Training curves", curves + "<p class='note'>First seed of each arm.</p>")


def _fidelity_section(page: _Page, classes, counts) -> None:
    folders = sorted((page.run_dir / "evaluation" / "fidelity").glob("*/fidelity.json"))
    if not folders:
        return
    body = ""
    for path in folders:
        folder = path.parent
        result, reference = read_json(path), read_json(folder / "reference.json")
        ext = result["extractor"]
        body += f"<h3>Extractor: {html.escape(ext)}</h3>"
        header = ["class", "real test", "synthetic", f"FID [{ext}]", f"KID [{ext}]", f"precision [{ext}]",
                  f"recall [{ext}]", f"FID real train [{ext}]"]
        shown = [classes[c] for c in plots.shown_classes(counts, page.top_k) if classes[c] in result["per_class"]]
        rows = []
        for name, m in [("(all)", result["overall"])] + [(c, result["per_class"][c]) for c in shown]:
            ref = reference["overall"] if name == "(all)" else reference["per_class"].get(name, {})
            kid = "–" if m["kid_mean"] is None else f"{m['kid_mean']:.4f} ± {m['kid_std']:.4f}"
            rows.append([name, m["n_real"], m["n_synthetic"], _num(m["fid"]), kid, _num(m["precision"]),
                         _num(m["recall"]), _num(ref.get("fid"))])
        _write_table(page.out / f"fidelity_{folder.name}", header, rows)
        body += _table(header, rows)
        body += ("<p class='note'>Synthetic set against the real test images, features of "
                 f"<b>{html.escape(ext)}</b>. Last column: the real training images of the class against the same test "
                 "images, the score real images of these counts get. Improved precision/recall (Kynkäänniemi et al. "
                 f"2019) with k = {result['overall'].get('k')}.</p>")
        png = plots.fidelity_per_class_plot(classes, counts, result["per_class"], reference["per_class"],
                                            page.out / f"fidelity_per_class_{folder.name}.png", ext, top_k=page.top_k)
        body += page.figure(png, f"Per-class FID [{ext}]: synthetic vs real training images, each against real test images")
        mem_path = folder / "memorisation.json"
        if mem_path.is_file():
            mem = read_json(mem_path)
            mheader = ["class", "synthetic", "real train", "nearest pixel RMS (min)", "(median)",
                       f"feature ratio (min) [{ext}]", "(median)", "near-copies", "share"]
            mrows = []
            for name, m in [("(all)", mem["overall"])] + [(c, mem["per_class"][c]) for c in shown if c in mem["per_class"]]:
                mrows.append([name, m["n_synthetic"], m["n_real"], f"{m['pixel_min']:.3f}", f"{m['pixel_median']:.3f}",
                              f"{m['feature_ratio_min']:.3f}", f"{m['feature_ratio_median']:.3f}", m["near_copies"],
                              f"{100 * m['near_copy_share']:.1f} %"])
            _write_table(page.out / f"memorisation_{folder.name}", mheader, mrows)
            body += "<h4>Memorisation</h4>" + _table(mheader, mrows)
            body += (f"<p class='note'>Nearest real <b>training</b> image of the same class for every synthetic image. "
                     f"Near-copy: RMS pixel distance ≤ {mem['pixel_threshold']} (pixels in [0, 1]) or feature distance ≤ "
                     f"{mem['feature_ratio']} × the class's median real-to-real nearest-neighbour distance.</p>")
            body += page.figure(folder / "closest_pairs.png", "Closest pairs per class: synthetic (left) | nearest real "
                                                              "training image (right), RMS pixel distance; red = near-copy")
    page.section("fidelity", "Fidelity and memorisation", body)


def _samples_section(page: _Page) -> None:
    body = page.figure(page.run_dir / "evaluation" / "samples" / "real_vs_synthetic.png",
                       "Real training images (left) beside synthetic images (right) per class, head → tail")
    body += page.figure(page.run_dir / "synthetic" / "samples.png", "Synthetic samples per class (synthetic/samples.png)")
    if body:
        page.section("samples", "Samples", body)


def _cas_section(page: _Page, classes, counts, rows: list[dict]) -> None:
    folders = seed_folders(page.run_dir / "evaluation" / "cas")
    metrics = [read_json(f / "metrics.json") for f in folders if (f / "metrics.json").is_file()]
    if not metrics:
        return
    acc = [m["accuracy"] for m in metrics]
    n = len(acc)
    baseline = next((r for r in rows if r["synthetic"] == "none"), None)
    body = (f"<p>Classifier trained on the synthetic set <b>alone</b>, tested on the real test split: accuracy "
            f"<b>{fmt_pct(float(np.mean(acc)), float(np.std(acc, ddof=1)) if n > 1 else 0.0, n)} %</b> over {n} seed(s)"
            + (f" (the real-only {baseline['arm']}: {fmt_pct(baseline['accuracy'], baseline['accuracy_std'], baseline['seeds'])} %)"
               if baseline else "") + f". Classes with synthetic images: {len(metrics[0].get('trained_classes', []))} of {len(classes)}.</p>")
    per_class = _mean_per_class(folders)
    shown = plots.shown_classes(counts, page.top_k)
    crow = [[classes[c], int(counts[c]), _num(per_class.get(classes[c]))] for c in shown]
    _write_table(page.out / "cas", ["class", "real training images", "CAS accuracy"], crow)
    body += _table(["class", "real training images", "CAS accuracy (mean over seeds)"], crow)
    page.section("cas", "Classification Accuracy Score (train on synthetic, test on real)", body)


def _replacement_section(page: _Page) -> None:
    path = page.run_dir / "evaluation" / "replacement" / "replacement.json"
    if not path.is_file():
        return
    rep = read_json(path)
    rows = [[f"{r['percent']:g} %", r["replaced"], fmt_pct(r["accuracy"], r["accuracy_std"], r["seeds"]), r["seeds"]]
            for r in rep["rows"]]
    header = ["real images replaced", "images swapped", "test accuracy (%)", "seeds"]
    _write_table(page.out / "replacement", header, rows)
    body = _table(header, rows) + f"<p class='note'>{html.escape(rep['note'])} (arm {html.escape(rep['arm'])}).</p>"
    png = plots.replacement_curve([r["percent"] for r in rep["rows"]], [r["accuracy"] for r in rep["rows"]],
                                  [r["accuracy_std"] for r in rep["rows"]], page.out / "replacement_curve.png",
                                  f"replacement study, arm {rep['arm']}, {len(rep['seeds'])} seed(s)")
    body += page.figure(png, "Test accuracy against the share of real training images replaced by synthetic ones")
    page.section("replacement", "Replacement study", body)


def _targeted_section(page: _Page, classes, counts, shot_of) -> None:
    path = page.run_dir / "evaluation" / "targeted" / "targeted.json"
    if not path.is_file():
        return
    t = read_json(path)
    header = ["class", "real training images", "real-only", f"+{t['count_per_class']} synthetic", "pseudo-labelled control"]
    rows = [[c, int(counts[classes.index(c)]), _num(t["real_only"].get(c)), _num(t["targeted"].get(c)),
             _num((t["control"] or {}).get(c))] for c in t["classes"]]
    rows.append(["(overall accuracy)", "", _num(t["real_only_accuracy"]), _num(t["targeted_accuracy"]),
                 _num(t.get("control_accuracy"))])
    _write_table(page.out / "targeted", header, rows)
    body = (f"<p>{t['count_per_class']} synthetic images added to each of {', '.join(map(html.escape, t['classes']))} "
            f"(arm {html.escape(t['arm'])} settings, real + synthetic combined). Control: "
            f"{html.escape(t['control_note'] or '–')}.</p>" + _table(header, rows))
    series = {"real-only": t["real_only"], "targeted": t["targeted"]}
    if t["control"]:
        series["pseudo-labelled control"] = t["control"]
    png = plots.per_class_comparison(classes, counts, series, page.out / "targeted_per_class.png", shot_of=shot_of,
                                     top_k=page.top_k)
    body += page.figure(png, "Per-class test accuracy: real-only vs targeted synthetic vs pseudo-labelled control")
    page.section("targeted", "Targeted classes", body)


def _few_shot_section(page: _Page) -> None:
    path = page.run_dir / "evaluation" / "few_shot" / "few_shot.json"
    if not path.is_file():
        return
    fs = read_json(path)
    ext = fs["extractor"]
    by = {(r["shots"], r["synthetic"]): r for r in fs["rows"]}
    shots = sorted({r["shots"] for r in fs["rows"]})
    header = ["shots per class", f"real only [{ext}]", f"real + synthetic [{ext}]", "synthetic rows", "trials"]
    rows = []
    for k in shots:
        real, synth = by[(k, False)], by.get((k, True))
        rows.append([k, fmt_pct(real["mean"], real["std"], len(real["trials"])),
                     fmt_pct(synth["mean"], synth["std"], len(synth["trials"])) if synth else "–",
                     synth["synthetic_rows"] if synth else 0, len(real["trials"])])
    _write_table(page.out / "few_shot", header, rows)
    body = _table(header, rows) + (f"<p class='note'>{html.escape(fs['note'])}; features of <b>{html.escape(ext)}</b>; "
                                   "mean ± std over trials (%).</p>")
    page.section("few_shot", "Few-shot protocol", body)


def write_html_report(run_dir: str | Path) -> Path:
    """Writes ``RUN_DIR/report/report.html`` (self-contained) and its PNG/CSV/Markdown tables; returns its path."""
    from synthaug.report.results import run_config

    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = run_config(run_dir)
    stats = read_json(run_dir / "data" / "stats.json")["groups"][0]
    sizes = read_json(run_dir / "data" / "done.json")
    classes = list(stats["counts"])
    counts = np.asarray([stats["counts"][c] for c in classes])
    shot_of = {c: s for s, members in stats["shot_groups"].items() for c in members}
    page = _Page(run_dir, out, cfg.evaluation.report_top_k)

    resolved = run_dir / "config.resolved.yaml"
    page.section("config", "Configuration", "<details><summary>config.resolved.yaml</summary><pre>"
                 + html.escape(resolved.read_text() if resolved.is_file() else "(missing)") + "</pre></details>")
    _data_section(page, stats, sizes, classes, counts)
    _filters_section(page)
    rows = arm_rows(run_dir)
    if rows:
        _arms_section(page, rows)
        _accuracy_pictures(page, cfg, rows, classes, counts, shot_of)
    _fidelity_section(page, classes, counts)
    _samples_section(page)
    _cas_section(page, classes, counts, rows)
    _replacement_section(page)
    _targeted_section(page, classes, counts, shot_of)
    _few_shot_section(page)
    judge = run_dir / "judge" / "done.json"
    if judge.is_file() and read_json(judge).get("synthetic_label_accuracy"):
        j = read_json(judge)
        page.section("judge", "Label check of the synthetic images", (
            f"<p>A classifier trained on the balanced real pool (real test accuracy {100 * j['judge_test_accuracy']:.1f} %) "
            "recognises this share of each class's synthetic images as their intended class:</p>"
            + _table(["class", "recognised"], [[c, f"{100 * v:.0f} %"] for c, v in j["synthetic_label_accuracy"].items()])))
    notes = [f"Study <b>{html.escape(k)}</b> skipped: {html.escape(v)}." for k, v in _skip_notes(run_dir).items()]
    notes += [f"Arm <b>{html.escape(n['arm'])}</b> left out: {html.escape(n['reason'])}."
              for n in (read_json(p) for p in sorted((run_dir / "train").glob("*/left_out.json")))]
    if notes:
        page.section("skipped", "Not run", "".join(f"<p class='skip'>{n}</p>" for n in notes))
    text = page.render(f"synthaug report: {cfg.name}")
    path = out / "report.html"
    path.write_text(text)
    (out / "report_manifest.json").write_text(json.dumps({"sections": [k for k, _, _ in page.sections],
                                                          "pictures": page.pictures}, indent=2))
    return path
