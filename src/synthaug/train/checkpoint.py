"""Checkpoints of everything synthaug trains: the classifier's epoch checkpoint, the diffusion generators'
(``ddpm``, ``mvc``, ``sd-finetune``) step checkpoints, and their final model folders. One set of primitives:

- crash-safe folder writes: a folder is written as ``<folder>.partial`` (:func:`partial_folder`), then swapped
  in by renames (:func:`swap_in`: the old one renamed to ``<folder>.old``, the new one in, the old deleted), so
  a folder without a suffix is always whole and a crash leaves a complete one behind (read by :func:`find`,
  repaired by :func:`recover_model_dir`);
- training state (optimizer, LR schedule, loss scaler, epoch): ``torch.save`` of tensors and plain numbers,
  read back with ``weights_only=True`` (:func:`save_state`, :func:`load_state`); weights as safetensors;
- the global random states as safetensors (:func:`rng_state`, :func:`set_rng_state`);
- a damaged or foreign file is a :class:`CheckpointError` naming the file and the fix (:func:`reading`).

Nothing is unpickled. On disk:

- classifier (:func:`save`, :func:`find`, :func:`load`, :func:`remove`): ``<workdir>/last/`` holds
  ``model.safetensors``, ``rng.safetensors`` (Python, NumPy, torch CPU and every CUDA device; of process 0 when
  several train together, ``rng_rank<r>.safetensors`` for each other process r), ``trainer.pt`` and ``curves.csv``;
- generators (:class:`StepCheckpoints`): ``<workdir>/checkpoints/step-XXXXXXX/`` holds the weights (written by
  the caller), ``optimizer.pt`` (optimizer, LR schedule and, with fp16, the loss scaler) and ``state.json``; the
  newest ``keep`` are kept;
- final model folders (:func:`swap_in`, :func:`recover_model_dir`, :func:`check_model_info`): ``<model>/``
  with its :data:`MODEL_INFO` written last.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synthaug.data.schema import LabelSchema
from synthaug.errors import MissingFileError, SettingError, UserError
from synthaug.train.curves import write_curves
from synthaug.utils import read_json

MODEL_INFO = "synthaug.json"  # written last into a model folder: what made it (generator, schema, training)
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- reading errors
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


# ------------------------------------------------------------------------------------ crash-safe folders
def _aside(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def _partial(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def partial_folder(final: Path) -> Path:
    """An empty ``<final>.partial`` folder (a leftover of an interrupted write is deleted) to write ``final``'s
    new content into before :func:`swap_in`."""
    tmp = _partial(Path(final))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(partial: Path, final: Path) -> None:
    """Replaces ``final`` by the complete folder ``partial`` with no moment at which neither exists on disk:
    1. the old one is renamed aside (``<final>.old``), 2. the new one renamed in, 3. the old one deleted."""
    final = Path(final)
    aside = _aside(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by an earlier interrupted swap
        final.rename(aside)
    Path(partial).rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def find(folder: Path, *, marker: str = "trainer.pt") -> Path | None:
    """The complete folder at ``folder`` (it holds ``marker``), or the previous one a crash during
    :func:`swap_in` left at ``<folder>.old``; None if there is neither. Changes nothing on disk (every process
    may call it)."""
    for candidate in (folder, _aside(folder)):
        if (candidate / marker).is_file():
            return candidate
    return None


def remove(folder: Path) -> None:
    """Deletes ``folder`` and any leftovers of an interrupted write or swap (``.old``, ``.partial``)."""
    for path in (folder, _aside(folder), _partial(folder)):
        shutil.rmtree(path, ignore_errors=True)


def save_state(path: Path, state: dict) -> None:
    """Writes training state (state dicts of tensors and plain numbers) for :func:`load_state`."""
    torch.save(state, path)


def load_state(path: Path) -> dict:
    """Training state written by :func:`save_state`, on the CPU (``load_state_dict`` moves optimizer state to
    its parameters' device); ``weights_only=True``: a file holding other pickled objects is refused."""
    return torch.load(path, weights_only=True, map_location="cpu")


# ------------------------------------------------------------------------------------------ random states
def rng_state() -> dict[str, torch.Tensor]:
    """The global random states (Python ``random``, NumPy's legacy global generator, torch CPU and CUDA) as
    tensors."""
    version, python_state, gauss = random.getstate()
    _, numpy_key, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {
        "python_version": torch.tensor(version),
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_key": torch.from_numpy(numpy_key.astype(np.int64)),
        "numpy_pos": torch.tensor(numpy_pos),
        "numpy_gauss": torch.tensor([numpy_has_gauss, numpy_gauss], dtype=torch.float64),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state |= {f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restores the states of :func:`rng_state` (CUDA devices that the checkpoint has and this machine has)."""
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate((int(state["python_version"]), tuple(state["python_state"].tolist()),
                     gauss if has_gauss else None))
    has_gauss, gauss = state["numpy_gauss"].tolist()
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(has_gauss), gauss))
    torch.set_rng_state(state["torch_cpu"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"torch_cuda_{i}" in state:
            torch.cuda.set_rng_state(state[f"torch_cuda_{i}"], i)


def _rng_file(rank: int) -> str:
    return "rng.safetensors" if rank == 0 else f"rng_rank{rank}.safetensors"


# ------------------------------------------------------------------------- the classifier's epoch checkpoint
def save(folder: Path, model: torch.nn.Module, trainer: dict, curves: list[dict], *,
         rng_states: list[dict[str, torch.Tensor]] | None = None) -> None:
    """Writes the classifier's checkpoint and swaps it in for ``folder`` (:func:`swap_in`).

    Args:
        trainer: state dicts and numbers (optimizer, schedule, scaler, epoch), for :func:`save_state`.
        rng_states: the :func:`rng_state` of every process, in rank order (default: this process's alone).
    """
    tmp = partial_folder(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    for rank, state in enumerate(rng_states or [rng_state()]):
        save_file(state, tmp / _rng_file(rank))
    save_state(tmp / "trainer.pt", trainer)
    write_curves(tmp / "curves.csv", curves)
    swap_in(tmp, folder)


def load(folder: Path, model: torch.nn.Module, *, rank: int = 0) -> tuple[dict, list[dict]]:
    """Loads the weights of the classifier checkpoint at ``folder`` (one :func:`find` returned) into ``model``
    and restores the global random states (those process ``rank`` saved).

    Returns:
        (the ``trainer`` dict given to :func:`save`, the curve rows so far).

    Raises:
        CheckpointError: a file of the checkpoint cannot be read (the message says to delete the folder).
    """
    with reading(folder, fix=f"delete {folder} to train this arm from its first epoch."):
        model.load_state_dict(load_file(folder / "model.safetensors"))
        trainer = load_state(folder / "trainer.pt")
        if (folder / _rng_file(rank)).is_file():
            set_rng_state(load_file(folder / _rng_file(rank)))
        else:  # written by an older synthaug, or by fewer processes than now resume it
            log.warning("%s has no random states for process %d (%s): the resumed run continues, but not "
                        "bit-exactly.", folder, rank, _rng_file(rank))
    with open(folder / "curves.csv") as f:
        curves = [{k: int(float(v)) if k in ("epoch", "phase") else float(v) for k, v in row.items() if v != ""}
                  for row in csv.DictReader(f)]
    return trainer, curves


# --------------------------------------------------------------------- the generators' step checkpoints
class StepCheckpoints:
    """The step checkpoints of one diffusion training run, in ``folder``: the newest ``keep`` are kept."""

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
        tmp = partial_folder(final)
        write_weights(tmp)
        state = {"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()}
        if scaler is not None and scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        save_state(tmp / "optimizer.pt", state)
        (tmp / "state.json").write_text(json.dumps({**(info or {}), "step": step}))
        swap_in(tmp, final)
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
            state = load_state(last / "optimizer.pt")
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


# ------------------------------------------------------------------------------------ final model folders
def recover_model_dir(final: Path) -> None:
    """Repairs what an interrupted :func:`swap_in` of a model folder left: a crash after the old model was
    renamed aside but before the new one was renamed in leaves no ``final``; the complete new model (its
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
