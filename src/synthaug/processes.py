"""The processes that work together under ``accelerate launch`` (or ``torchrun``): which one this is, and the few
collectives that training and generation need. One type for both: the classifier loop trains data-parallel
with it, ``fill_store`` shares the plan out with it, and the runner's records let its main process alone write.

Data-parallel classifier training: every process builds the same epoch plan (the batches are seeded by
(seed, epoch)); process r takes every N-th key of each batch from position r (:meth:`Processes.shard`), and DDP
averages the gradients, so a step sees the whole batch as in one process and the number of steps, the
learning-rate schedule and each image's augmentation seed do not depend on N.

Importing this module imports no torch (the runner's records use the type); the collectives import it when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState

BARRIER_TIMEOUT_HOURS = 12  # the longest wait at a barrier (the other processes wait while one trains)


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or ``torchrun``) started: ``WORLD_SIZE``, 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Processes:
    """The processes that work together: this one's index and their count (``Processes()``: alone).

    Attributes:
        index: this process's rank (0: the main process, the only one that writes shared files).
        count: the number of processes.
        local_index: the rank on this machine (its GPU under CUDA).
        cpu: gloo on CPU ranks (``device: cpu``, no GPU, or ACCELERATE_USE_CPU=1 on a GPU machine).
    """

    index: int = 0
    count: int = 1
    local_index: int = 0
    cpu: bool = False

    @classmethod
    def launched(cls, device: torch.device) -> Processes:
        """The processes started by ``accelerate launch``; sets up accelerate's process group (gloo on CPU, NCCL
        on CUDA) when there are several, and touches nothing when there is one. Barriers wait for hours, not
        torch's 30 minutes: the other processes wait while the main one trains a generator."""
        if launched_processes() < 2:
            return cls()
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        cpu = device.type == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU")
        state = PartialState(cpu=cpu, timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
        return cls(state.process_index, state.num_processes, state.local_process_index, cpu)

    @classmethod
    def of(cls, state: Processes | PartialState | None) -> Processes:
        """``state`` as :class:`Processes`: accelerate's ``PartialState`` (its process group already set up) is
        read; a :class:`Processes` is returned as it is; None means this process alone."""
        if state is None:
            return cls()
        if isinstance(state, Processes):
            return state
        return cls(state.process_index, state.num_processes, state.local_process_index,
                   state.device.type == "cpu")

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: its own GPU (``cuda:<local rank>``) when several share a CUDA machine, the
        CPU when the processes were launched as CPU ranks."""
        import torch

        if self.count > 1 and self.cpu:
            return torch.device("cpu")
        if self.count > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_index)
        return device

    def barrier(self) -> None:
        """Waits until every process is here (returns at once when alone)."""
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the processes (the values themselves when alone)."""
        if self.count == 1:
            return values
        import torch
        import torch.distributed as dist

        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        total = torch.tensor(values, dtype=torch.float64, device=backend_device)
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, obj: object) -> list:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if self.count == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.count
        dist.all_gather_object(out, obj)
        return out

    def shard(self, batches: list[list]) -> list[list]:
        """This process's part of every batch: every ``count``-th key from position ``index``.

        A batch whose size is not a multiple of ``count`` is padded with its own first keys (as accelerate's
        ``even_batches`` does), so every process steps the same number of times on equally many images.
        """
        if self.count == 1:
            return batches
        shards = []
        for batch in batches:
            padded = [batch[i % len(batch)] for i in range(len(batch) + (-len(batch) % self.count))]
            shards.append(padded[self.index::self.count])
        return shards

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when there are several processes (gradients averaged)."""
        if self.count == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
