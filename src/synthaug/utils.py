"""Small shared helpers: seeds, devices, mixed precision, atomic file writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. experiment seed and item id), stable across runs."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; other values are passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return dev


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in {"fp32", "bf16", "fp16"}; fp16 needs CUDA."""
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, but got {precision!r}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' on CPU.")
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def torch_dtype(precision: str) -> torch.dtype:
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, but got {precision!r}.")
    return _DTYPES[precision]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Writes to a temporary file beside ``path``, fsyncs, then renames it over ``path``.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
