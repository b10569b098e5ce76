"""Shared torch helpers: seeding, devices, mixed precision (bf16 only where the CPU or GPU runs it natively)."""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

from synthaug.errors import SettingError

log = logging.getLogger(__name__)


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
        raise SettingError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'.")
    return dev


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix maths in hardware (AVX512-BF16 or AMX-BF16) for oneDNN.

    On AVX2-only CPUs bf16 autocast is emulated and runs 12-16x slower than fp32 (measured on a 2-core AMD
    EPYC), so ``precision: auto`` must not pick it there. oneDNN's ``ONEDNN_MAX_CPU_ISA`` is respected: with
    ``ONEDNN_MAX_CPU_ISA=AVX2`` (and ``ATEN_CPU_CAPABILITY=avx2``) a bf16 machine runs as an AVX2-only one.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and not any(name in isa for name in ("BF16", "AMX", "FP16", "AVX10")):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device, *, what: str = "precision") -> str:
    """``"auto"`` → ``"bf16"`` where the hardware runs it natively (a CUDA GPU with bf16 support, or a CPU
    with AVX512-BF16/AMX), else ``"fp32"``; other values are checked and returned. Logs the choice."""
    if precision != "auto":
        if precision not in _DTYPES:
            raise SettingError(f"{what} must be one of {['auto', *sorted(_DTYPES)]}, but got {precision!r}.")
        return precision
    if device.type == "cuda":
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        why = "the GPU supports bf16" if chosen == "bf16" else "the GPU has no bf16"
    elif device.type == "cpu":
        chosen = "bf16" if cpu_has_native_bf16() else "fp32"
        why = "the CPU has AVX512-BF16/AMX" if chosen == "bf16" else "the CPU has no native bf16 (AVX512-BF16/AMX)"
    else:
        chosen, why = "fp32", f"device type {device.type!r}"
    if (device.type, chosen) not in _LOGGED:
        _LOGGED.add((device.type, chosen))
        log.info("%s auto → %s on %s (%s)", what, chosen, device.type, why)
    return chosen


_LOGGED: set[tuple[str, str]] = set()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in {"fp32", "bf16", "fp16"}; fp16 needs CUDA."""
    if precision not in _DTYPES:
        raise SettingError(f"precision must be one of {sorted(_DTYPES)}, but got {precision!r}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise SettingError("precision='fp16' needs a CUDA device; use 'bf16' on CPU.")
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def torch_dtype(precision: str) -> torch.dtype:
    if precision not in _DTYPES:
        raise SettingError(f"precision must be one of {sorted(_DTYPES)}, but got {precision!r}.")
    return _DTYPES[precision]
