"""The classifier's epoch checkpoint: everything an interrupted run needs to continue bit-exactly.

A checkpoint folder holds ``model.safetensors``, ``rng.safetensors`` (the global random states of Python,
NumPy, torch CPU and every CUDA device; of process 0 when several train together, ``rng_rank<r>.safetensors``
for each other process r), ``trainer.pt`` (optimizer, schedule, gradient scaler and epoch:
tensors and plain numbers only, loaded with ``weights_only=True``) and ``curves.csv``. Nothing is unpickled.

A new checkpoint is written to ``<folder>.partial`` and swapped in by renames, so a crash at any moment
leaves one complete checkpoint: ``<folder>``, or ``<folder>.old`` during the swap (see :func:`find`).
"""

from __future__ import annotations

import csv
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from synthaug.generators.checkpoints import reading
from synthaug.train.curves import write_curves

log = logging.getLogger(__name__)


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


def save(folder: Path, model: torch.nn.Module, trainer: dict, curves: list[dict], *,
         rng_states: list[dict[str, torch.Tensor]] | None = None) -> None:
    """Writes a checkpoint and swaps it in for ``folder`` without a moment with no complete checkpoint.

    Args:
        trainer: state dicts and numbers (optimizer, schedule, scaler, epoch) for ``torch.save``.
        rng_states: the :func:`rng_state` of every process, in rank order (default: this process's alone).
    """
    tmp, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    for rank, state in enumerate(rng_states or [rng_state()]):
        save_file(state, tmp / _rng_file(rank))
    torch.save(trainer, tmp / "trainer.pt")
    write_curves(tmp / "curves.csv", curves)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def find(folder: Path) -> Path | None:
    """The complete checkpoint at ``folder``, or the previous one left at ``<folder>.old`` by a crash during
    the swap; None if there is neither."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "trainer.pt").is_file():
            return candidate
    return None


def load(folder: Path, model: torch.nn.Module, *, rank: int = 0) -> tuple[dict, list[dict]]:
    """Loads the weights into ``model`` and restores the global random states (those process ``rank`` saved).

    Returns:
        (the ``trainer`` dict given to :func:`save`, the curve rows so far).
    """
    with reading(folder, fix=f"delete {folder} to train this arm from its first epoch."):
        model.load_state_dict(load_file(folder / "model.safetensors"))
        trainer = torch.load(folder / "trainer.pt", weights_only=True)
        if (folder / _rng_file(rank)).is_file():
            set_rng_state(load_file(folder / _rng_file(rank)))
        else:  # written by an older synthaug, or by fewer processes than now resume it
            log.warning("%s has no random states for process %d (%s): the resumed run continues, but not "
                        "bit-exactly.", folder, rank, _rng_file(rank))
    with open(folder / "curves.csv") as f:
        curves = [{k: int(float(v)) if k in ("epoch", "phase") else float(v) for k, v in row.items() if v != ""}
                  for row in csv.DictReader(f)]
    return trainer, curves


def remove(folder: Path) -> None:
    """Deletes the checkpoint and any leftovers of an interrupted save."""
    for path in (folder, folder.with_name(folder.name + ".old"), folder.with_name(folder.name + ".partial")):
        shutil.rmtree(path, ignore_errors=True)
