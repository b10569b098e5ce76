"""Resumable training checkpoints and crash-safe final-model folders, shared by the generators that train a
network (``ddpm``, ``mvc``, ``sd-finetune``).

Each checkpoint is ``<folder>/step-XXXXXXX/`` holding the model weights (written by the caller, as
safetensors), ``optimizer.pt`` (optimizer + LR schedule state, read back with ``weights_only=True``) and
``state.json``. It is written under a ``.partial`` name and renamed when complete, so a folder without that
suffix is always whole; the newest ``keep`` are kept. With fp16 training the loss scaler's state is saved too,
so a resumed run continues with the same scale.

A final model is written to ``<model>.partial``, its ``synthaug.json`` (:data:`MODEL_INFO`) last, then swapped
in by :func:`install_model_dir`; :func:`recover_model_dir` repairs a swap a crash interrupted.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError

from synthaug.data.schema import LabelSchema
from synthaug.errors import MissingFileError, SettingError, UserError
from synthaug.utils import read_json

MODEL_INFO = "synthaug.json"  # written last into a model folder: what made it (generator, schema, training)
log = logging.getLogger(__name__)


class CheckpointError(UserError, ValueError):
    """A weights or training-state file that cannot be read: damaged, truncated, another format, or a pickle
    that ``weights_only`` loading refuses. The message names the file and what to do."""


# what reading a damaged or foreign file raises: safetensors' own error, torch.load's refusal of a pickle
# (UnpicklingError) or of a truncated zip (RuntimeError), diffusers' OSError, a JSON error (a ValueError), ...
_READ_ERRORS = (SafetensorError, pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError)


@contextmanager
def reading(path: Path, *, fix: str) -> Iterator[None]:
    """Turns a failure to read the checkpoint file(s) at ``path`` into a :class:`CheckpointError` naming the path,
    what went wrong (first line of the library's message) and ``fix``. Errors that already name what is
    wrong (:class:`UserError`) pass through."""
    try:
        yield
    except UserError:
        raise
    except _READ_ERRORS as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        # a first line that ends in ':' introduces the detail (load_state_dict's "Error(s) in loading ...:")
        first = (" ".join(lines[:2]) if lines[0].endswith(":") else lines[0])[:300]
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {first}). Only "
                              f"safetensors weights and weights-only state files are loaded; {fix}") from None


class StepCheckpoints:
    def __init__(self, folder: Path, *, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _complete(self) -> list[Path]:
        return sorted(self.folder.glob("step-*[0-9]"))

    def save(self, step: int, write_weights: Callable[[Path], None], optimizer, lr_schedule,
             scaler: torch.amp.GradScaler | None = None, *, info: dict | None = None) -> Path:
        """Writes checkpoint ``step``; ``write_weights(folder)`` saves the model(s) into ``folder``; ``info``: more
        JSON fields for its ``state.json`` (read back by ``restore``'s ``check``)."""
        final = self.folder / f"step-{step:07d}"
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_weights(tmp)
        state = {"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()}
        if scaler is not None and scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        torch.save(state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**(info or {}), "step": step}))
        tmp.rename(final)
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(old)
        return final

    def restore(self, optimizer, lr_schedule, scaler: torch.amp.GradScaler | None = None, *,
                check: Callable[[Path, dict], None] | None = None, clean: bool = True) -> tuple[Path, int] | None:
        """Loads optimizer and schedule state from the newest complete checkpoint (dropping unfinished ones).

        Args:
            check: called with the checkpoint folder and its ``state.json`` before anything is loaded; raises
                for a checkpoint that must not be resumed (e.g. written with other training settings).
            clean: delete unfinished checkpoints first (one process alone may, when several train together).

        Returns:
            (its folder, for the caller to load weights from; its step), or None when there is none.
        """
        for stale in self.folder.glob("*.partial") if clean else ():
            shutil.rmtree(stale, ignore_errors=True)
        complete = self._complete()
        if not complete:
            return None
        last = complete[-1]
        with self.reading(last):
            info = json.loads((last / "state.json").read_text())
            if check is not None:
                check(last, info)
            state = torch.load(last / "optimizer.pt", weights_only=True, map_location="cpu")
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["lr_schedule"])
            if scaler is not None and "grad_scaler" in state:
                scaler.load_state_dict(state["grad_scaler"])
            step = int(info["step"])
        log.info("Resuming training from %s (step %d).", last, step)
        return last, step

    def reading(self, last: Path):
        """Context for reading checkpoint ``last``: a damaged file is a :class:`CheckpointError` saying to delete
        it (training then resumes from the checkpoint before, or starts over)."""
        return reading(last, fix=f"delete {last} to resume from the checkpoint before it (or {self.folder} to "
                                 "start training over).")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 training only (bf16 and fp32 keep fp32's exponent range and need none).

    Use as ``scaler.scale(loss).backward(); scaler.unscale_(optimizer); clip; scaler.step(optimizer);
    scaler.update()``; when disabled each call is a pass-through.
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# ------------------------------------------------------------------------------------ final model folders
def _aside(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def _partial(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def recover_model_dir(final: Path) -> None:
    """Repairs what an interrupted :func:`install_model_dir` left: a crash after the old model was renamed
    aside but before the new one was renamed in leaves no ``final``; the complete new model (its
    :data:`MODEL_INFO` written) is then moved in, else the old one back. A leftover old copy is deleted."""
    final = Path(final)
    aside, partial = _aside(final), _partial(final)
    if not final.exists():
        if (partial / MODEL_INFO).is_file():
            partial.rename(final)
        elif aside.exists():
            aside.rename(final)
    if final.exists() and aside.exists():
        shutil.rmtree(aside)


def install_model_dir(partial: Path, final: Path) -> None:
    """Replaces ``final`` by the complete folder ``partial`` with no moment at which neither exists on disk:
    1. the old model is renamed aside, 2. the new one renamed in, 3. the old one deleted."""
    final = Path(final)
    aside = _aside(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by an earlier interrupted swap
        final.rename(aside)
    Path(partial).rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def check_model_info(folder: Path, schema: LabelSchema, *, generator: str, field: str) -> dict:
    """Reads the :data:`MODEL_INFO` a trained model folder holds and refuses one made for another label schema.

    Args:
        folder: the model folder (e.g. ``generator.params.checkpoint``).
        schema: the label schema of the current data.
        generator: the generator name the folder must have been written by.
        field: the config field naming the folder, for messages.

    Raises:
        MissingFileError: if the folder holds no :data:`MODEL_INFO`.
        SettingError: if it was written by another generator or for another label schema.
    """
    path = Path(folder) / MODEL_INFO
    if not path.is_file():
        raise MissingFileError(f"{field}={str(folder)!r} holds no {MODEL_INFO}, so it is not a model a "
                               f"{generator} fit wrote (nothing tells which classes it was trained on). Give "
                               f"the `model` folder of an earlier {generator} run's workdir.")
    with reading(path, fix=f"give the `model` folder of a complete {generator} run, or unset {field} to train."):
        info = read_json(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object written by a {generator} fit, got "
                              f"{type(info).__name__}; give the `model` folder of a complete {generator} run.")
    if info.get("generator") != generator:
        raise SettingError(f"{field}={str(folder)!r} was written by generator {info.get('generator')!r}, "
                           f"not {generator!r}; give a {generator} model folder.")
    if info.get("schema") != schema.to_dict():
        raise SettingError(f"{field}={str(folder)!r} was trained on label schema {info.get('schema')}, but the "
                           f"data has schema {schema.to_dict()}; its class indices would mean other classes. "
                           "Train on this data (unset the checkpoint) or use data with the model's classes.")
    return info
