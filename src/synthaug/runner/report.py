"""Stage ``report``: the tables (``report/results.md``, CSV, ``summary.json``) and the self-contained HTML page,
rendered from the run folder's files alone (:mod:`synthaug.report`)."""

from __future__ import annotations

from pathlib import Path


def report_stage(run_dir: Path) -> dict:
    """Builds the report of ``run_dir`` and writes ``report/report.html``. Returns the report (see
    :func:`synthaug.report.tables.build_report`): ``summary`` and ``markdown`` among its keys."""
    from synthaug.report.html import write_html_report
    from synthaug.report.tables import build_report

    report = build_report(run_dir)
    write_html_report(run_dir)  # report/report.html, self-contained, from the run folder's files
    return report
