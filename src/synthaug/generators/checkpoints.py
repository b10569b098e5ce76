"""Resumable training checkpoints shared by the generators that train a network (``ddpm``, ``mvc``).

Each checkpoint is ``<folder>/step-XXXXXXX/`` holding the model weights (written by the caller, as
safetensors), ``optimizer.pt`` (optimizer + LR schedule state, read back with ``weights_only=True``) and
``state.json``. It is written under a ``.partial`` name and renamed when complete, so a folder without that
suffix is always whole; the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


class StepCheckpoints:
    def __init__(self, folder: Path, *, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _complete(self) -> list[Path]:
        return sorted(self.folder.glob("step-*[0-9]"))

    def save(self, step: int, write_weights: Callable[[Path], None], optimizer, lr_schedule) -> Path:
        """Writes checkpoint ``step``; ``write_weights(folder)`` saves the model(s) into ``folder``."""
        final = self.folder / f"step-{step:07d}"
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_weights(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        tmp.rename(final)
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old)
        return final

    def restore(self, optimizer, lr_schedule) -> tuple[Path, int] | None:
        """Loads optimizer and schedule state from the newest complete checkpoint (dropping unfinished ones).

        Returns:
            (its folder, for the caller to load weights from; its step), or None when there is none.
        """
        for stale in self.folder.glob("*.partial"):
            shutil.rmtree(stale)
        complete = self._complete()
        if not complete:
            return None
        last = complete[-1]
        state = torch.load(last / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        step = json.loads((last / "state.json").read_text())["step"]
        log.info("Resuming training from %s (step %d).", last, step)
        return last, step

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
