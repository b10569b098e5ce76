"""``synthaug tune`` with each trial's training swapped for a fast function of its parameters (for the
multi-worker tests). Everything else (study, claims, budget, heartbeat, retries, progress) is the real command.

Environment: TUNE_MARKS (a folder for markers ``ready-<pid>``, ``start-<trial>-<pid>``,
``epoch-<trial>-<pid>``, ``done-<trial>-<pid>``), TUNE_WORKERS (wait for this many workers to be ready before
the first trial trains, so that they overlap), TUNE_EPOCH_DELAY (seconds per epoch).
"""

import math
import os
import sys
import time
from pathlib import Path

import synthaug.tuning.objective as objective

MARKS = Path(os.environ["TUNE_MARKS"])
WORKERS = int(os.environ.get("TUNE_WORKERS", "1"))
DELAY = float(os.environ.get("TUNE_EPOCH_DELAY", "0.2"))


def wait_for_workers() -> None:
    (MARKS / f"ready-{os.getpid()}").touch()
    deadline = time.time() + 60
    while len(list(MARKS.glob("ready-*"))) < WORKERS and time.time() < deadline:
        time.sleep(0.05)


def fast_train(inputs, on_epoch_end):
    number, pid = int(inputs.workdir.name.removeprefix("trial")), os.getpid()
    (MARKS / f"start-{number}-{pid}").touch()
    wait_for_workers()
    loss = (math.log10(inputs.train.lr) + 2.5) ** 2 + (math.log10(inputs.train.weight_decay) + 3) ** 2
    for epoch in range(inputs.train.epochs):
        time.sleep(DELAY)
        (MARKS / f"epoch-{number}-{pid}").touch()
        on_epoch_end(epoch, {"val_loss": loss + 0.1 / (epoch + 1), "val_acc": 1 / (1 + loss)})
    (MARKS / f"done-{number}-{pid}").touch()


objective.train_trial = fast_train

if __name__ == "__main__":
    from synthaug.cli import main

    sys.exit(main(sys.argv[1:]))
