"""``synthaug report RUN_DIR`` (the HTML report of a finished run folder), ``synthaug evaluate-fidelity CONFIG``
(FID/KID/precision-recall and the memorisation check) and ``synthaug study CONFIG --study NAME`` (CAS, oracle,
replacement, targeted classes): a command-line layer over :mod:`synthaug.runner.studies` and
:mod:`synthaug.report`. Heavy imports stay inside the command functions."""

from __future__ import annotations

from pathlib import Path

from synthaug.errors import MissingFileError
from synthaug.evaluate.config import STUDY_NAMES


def _open(args):
    """The run context, holding the run folder's lock for the whole command (from the start when the folder
    exists, else from the first write); a reader (``report``) takes none."""
    from synthaug.config import load_config
    from synthaug.runlock import command_lock
    from synthaug.runner import open_run

    cfg = load_config(args.config, args.overrides)
    lock = command_lock(cfg.run_dir, wait=args.wait, on_exit=getattr(args, "on_exit", None))
    ctx = open_run(cfg, lock=lock)
    ctx.records.redo_policy(keep_stale=args.keep_stale)
    return ctx


def cmd_report(args) -> None:
    from synthaug.report.html import write_html_report
    from synthaug.report.tables import build_report

    run_dir = Path(args.run_dir)
    for needed in ("config.yaml", "data/stats.json", "data/done.json"):
        if not (run_dir / needed).is_file():
            raise MissingFileError(f"{run_dir / needed} not found: {run_dir} is not a finished run folder (run "
                                   "`synthaug run CONFIG` first, or give the folder runs/<name>).")
    build_report(run_dir)
    path = write_html_report(run_dir)
    print(f"Report: {path}")


def _print_status(run_dir: Path, status: dict[str, str]) -> None:
    for study, state in status.items():
        print(f"{study}: {state}  ({run_dir / 'evaluation' / study})")


def cmd_evaluate_fidelity(args) -> None:
    from synthaug.runner.data import data_stage
    from synthaug.runner.studies import studies_stage
    from synthaug.utils import read_json

    ctx = _open(args)
    data_stage(ctx)
    ctx.records.hold_lock()  # the studies write even when every stage was done
    _print_status(ctx.dir, studies_stage(ctx, ["samples", "fidelity"]))
    done = ctx.dir / "evaluation" / "fidelity" / ctx.cfg.evaluation.fidelity.extractor / "done.json"
    if done.is_file():
        d = read_json(done)
        print(f"[{d['extractor']}] synthetic vs real test: FID {d['fid']:.3f}, KID {d['kid']:.4f}; near-copies of "
              f"training images: {100 * d['near_copy_share']:.1f} %")


def cmd_study(args) -> None:
    from synthaug.runner.data import data_stage
    from synthaug.runner.studies import studies_stage

    ctx = _open(args)
    data_stage(ctx)
    ctx.records.hold_lock()  # the studies write even when every stage was done
    _print_status(ctx.dir, studies_stage(ctx, args.study or None))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="write RUN_DIR/report/report.html (self-contained) from a run folder")
    p.add_argument("run_dir", help="a run folder, e.g. runs/demo")
    p.set_defaults(func=cmd_report)
    for name, func, help_ in (
            ("evaluate-fidelity", cmd_evaluate_fidelity,
             "FID/KID/precision-recall of the synthetic set vs real test images and the memorisation check"),
            ("study", cmd_study, "run evaluation studies (all enabled ones, or --study NAME ...)")):
        p = subparsers.add_parser(name, help=help_)
        p.add_argument("config", help="experiment YAML")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set evaluation.fidelity.extractor=clip")
        p.add_argument("--wait", action="store_true",
                       help="when another synthaug process is writing the run folder, wait for it to finish "
                            "(default: refuse at once, naming its pid and command)")
        p.add_argument("--keep-stale", action="store_true",
                       help="keep a redone study's previous folder as <stage>.stale-<hash> (default: deleted once "
                            "the new one is complete)")
        if name == "study":
            p.add_argument("--study", action="append", default=[], choices=STUDY_NAMES,
                           help="run only this study (repeatable)")
        p.set_defaults(func=func)
