"""The results of a run folder, read from its files: the resolved config, every finished seed's metrics of an
arm, and shot-group means under the current thresholds. Tables, plots, the arms table and the HTML page all
read a run through this one module, so none of them imports another to get at results.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from synthaug.utils import read_json


SEED_FOLDER = re.compile(r"seed\d+")


def seed_folders(folder: Path) -> list[Path]:
    """The ``seed<k>`` folders of a stage (an arm, a study), by seed: not a redone seed's kept old result
    (``seed0.stale-<hash>``, from ``--keep-stale``), which would count as one more seed."""
    found = [p for p in Path(folder).glob("seed*") if SEED_FOLDER.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def run_config(run_dir: Path):
    """The resolved experiment config saved in ``run_dir/config.yaml``."""
    from synthaug.config import build_config

    return build_config(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()),
                        source=str(Path(run_dir) / "config.yaml"))


def seed_results(run_dir: Path, arm: str, seeds) -> list[dict]:
    """``metrics.json`` of every finished seed of ``arm``."""
    paths = [Path(run_dir) / "train" / arm / f"seed{s}" / "metrics.json" for s in seeds]
    return [read_json(p) for p in paths if p.is_file()]


def shot_means(metrics: dict, shot_groups: dict[str, list[str]]) -> dict[str, float | None]:
    """Mean per-class accuracy of each shot group (first label group), under the *current* thresholds
    (``data/stats.json``), so changing ``data.shots`` re-reports without retraining."""
    per_class = next(iter(metrics["groups"].values()))["per_class"]
    out = {}
    for shot, members in shot_groups.items():
        values = [per_class[c] for c in members if per_class.get(c) is not None]
        out[shot] = float(np.mean(values)) if values else None
    return out
