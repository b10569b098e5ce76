"""Downstream benchmark: the demo experiment at full budget (DDPM 2,500 steps, DPM-Solver++ 20 steps, 3 classifier seeds).

    .venv/bin/python bench/downstream.py [--set key=value ...]

Prints the results table (overall / many / medium / few-shot top-1, mean ± std over seeds), the synthetic
label check, and the wall-clock time of each stage. Finished stages are reused on re-run (runs/bench-downstream).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from synthaug.config import load_config
from synthaug.experiment import Experiment
from synthaug.utils import read_json

FULL_BUDGET = ["name=bench-downstream", "seeds=[0, 1, 2]", "generator.params.train_steps=2500",
               "generator.params.block_out_channels=[32, 64, 64]", "train.epochs=15",
               "generator.params.sampling_steps=20"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config, FULL_BUDGET + args.overrides)
    start = time.time()
    report = Experiment(cfg).run()
    print(report["markdown"])
    print("stage seconds:")
    for record in sorted(cfg.run_dir.glob("**/done.json")):
        print(f"  {record.parent.relative_to(cfg.run_dir)}: {read_json(record)['seconds']}")
    print(f"total wall-clock this invocation: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
