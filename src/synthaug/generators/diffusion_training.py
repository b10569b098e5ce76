"""The one training loop of the diffusion models synthaug trains (``ddpm``, ``mvc``, ``sd-finetune``), on an
``accelerate.Accelerator`` as diffusers' training scripts use it: ``prepare``, ``accumulate``, ``backward``,
``clip_grad_norm_`` when ``sync_gradients``, mixed precision (fp16 with a loss scaler), ``unwrap_model``, and
rank-0 writes between ``wait_for_everyone`` barriers. It runs alike in a plain process and under
``accelerate launch`` (DDP; gloo on CPU).

A generator supplies what differs (:class:`DiffusionTraining`): the loss of its share of a step's batch, given
the model and the step's CPU generator, and how its weights are written and read. The loop owns the rest: the
step range and resuming from the newest checkpoint, the per-step seeded draw, gradient clipping, the LR
schedule, EMA, the progress bar, periodic checkpoints and the final model's atomic install.

Results do not depend on the number of processes (up to floating point): every process draws the *global*
batch of step s (and micro-step m) from a CPU generator seeded by the generator's ``draw_seed(s, m)``, exactly as
one process does, and takes its rows ``index::count`` (:class:`BatchShare`); its loss is weighted so that DDP's
mean of the processes' gradients is the gradient of the whole batch's mean loss. The LR schedule steps once per
optimizer update, whatever the number of processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from synthaug.errors import SettingError
from synthaug.train.checkpoint import StepCheckpoints, partial_folder, swap_in

log = logging.getLogger(__name__)

T = TypeVar("T")
MIXED_PRECISION = {"fp32": "no", "no": "no", "bf16": "bf16", "fp16": "fp16"}  # synthaug precision -> accelerate's


def denoising_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     scheduler: Any) -> torch.Tensor:
    """What a denoising network is trained to output at timesteps ``t`` for clean inputs ``x0`` noised with
    ``noise``: the one objective of every trainer here (the DDPM on pixels, sd-finetune and mvc on latents).

    ``prediction_type`` is diffusers': "epsilon" the noise (Ho et al., 2020), "sample" the clean input,
    "v_prediction" the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho, 2022; the scheduler's
    ``get_velocity``). The samplers read the same setting from the scheduler's config, so a model is sampled as
    it was trained.

    Raises:
        SettingError: an unknown prediction type.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise SettingError(f"Unknown prediction_type {prediction_type!r}; use 'epsilon', 'sample' or 'v_prediction'.")


@dataclass(frozen=True)
class BatchShare:
    """This process's rows of a batch drawn whole by every process: rows ``index``, ``index + count``, ...

    Attributes:
        index: the process index (0 alone).
        count: the number of processes (1 alone: the whole batch).
    """

    index: int = 0
    count: int = 1

    def take(self, rows: T) -> T:
        """This process's rows of ``rows`` (a tensor or a sequence, batch first); all of them when alone."""
        return rows if self.count == 1 else rows[self.index :: self.count]

    def weight(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``loss`` (a mean over this process's rows) weighted so that the processes' mean, which DDP takes of
        the gradients, is the whole batch's mean; unchanged when alone."""
        if self.count == 1:
            return loss
        rows = len(range(self.index, batch_size, self.count))
        return loss * (rows * self.count / batch_size)

    def check(self, batch_size: int, field: str) -> None:
        if batch_size < self.count:
            raise SettingError(f"{field}={batch_size} is smaller than the {self.count} processes training together; "
                               f"every process needs a row of each batch. Set {field} >= {self.count}.")


@dataclass
class DiffusionTraining:
    """What one generator's training supplies to :func:`train_diffusion`.

    Attributes:
        model: the network to train (on ``accelerator.device``, not yet prepared).
        optimizer: its optimizer; ``lr_schedule``: the LR schedule, stepped once per optimizer update.
        loss: ``loss(model, step, generator, share)``: the loss of this process's ``share`` of step ``step``'s
            batch, every random draw of the whole batch taken from ``generator`` (a seeded CPU generator), in the
            same order whatever the share. Call the model given (DDP-wrapped under several processes).
        draw_seed: ``draw_seed(step, micro)``: the seed of the generator of micro-step ``micro`` of step ``step``.
        write_checkpoint: ``write_checkpoint(folder, model, ema)`` writes the weights into a checkpoint folder.
        read_checkpoint: ``read_checkpoint(folder, model, ema)`` loads what ``write_checkpoint`` wrote.
        write_model: ``write_model(folder, model, ema)`` writes the final model (EMA weights already copied in)
            into an empty folder (``<model_dir>.partial``, made for it); its marker file last.
        ema: an EMA of ``params`` (diffusers' ``EMAModel``), stepped after each optimizer update; or None.
        params: the trained parameters (default: those of ``model`` that require grad).
        max_grad_norm: the gradient-norm clip.
        gradient_accumulation_steps: micro-steps per optimizer update (each with its own draw).
        checkpoint_info: extra JSON fields for each checkpoint's ``state.json`` (e.g. a training fingerprint).
        check_checkpoint: ``check_checkpoint(folder, state)``, called before a checkpoint is loaded; raises for
            one that must not be resumed.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    loss: Callable[[torch.nn.Module, int, torch.Generator, BatchShare], torch.Tensor]
    draw_seed: Callable[[int, int], int]
    write_checkpoint: Callable[[Path, torch.nn.Module, EMAModel | None], None]
    read_checkpoint: Callable[[Path, torch.nn.Module, EMAModel | None], None]
    write_model: Callable[[Path, torch.nn.Module, EMAModel | None], None]
    ema: EMAModel | None = None
    params: Sequence[torch.nn.Parameter] | None = None
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    checkpoint_info: dict[str, Any] = field(default_factory=dict)
    check_checkpoint: Callable[[Path, dict], None] | None = None


def make_accelerator(precision: str, device: torch.device, *, gradient_accumulation_steps: int = 1,
                     field: str) -> Accelerator:
    """The ``Accelerator`` for training in ``precision`` ("fp32"/"no", "bf16", "fp16"; named by ``field``).

    Works in a plain process (one process, no launch needed) and under ``accelerate launch``. accelerate keeps one
    mixed precision per process; a plain process that trained in another one before (tests, notebooks) starts
    accelerate's settings afresh, while processes launched together must agree, else a clear error.

    Raises:
        SettingError: for fp16 without CUDA, or a precision other than the launched processes'.
    """
    mixed_precision = MIXED_PRECISION[precision]
    if mixed_precision == "fp16" and device.type != "cuda":
        raise SettingError(f"{field}='fp16' needs a CUDA device (fp16 trains with a loss scaler); use 'bf16' or "
                           "'fp32'.")
    processes = process_state(device)
    if processes.num_processes == 1 and (processes.device.type != device.type
                                         or AcceleratorState._shared_state.get("_mixed_precision") != mixed_precision):
        # one plain process that trained on another device or in another precision before (tests, notebooks):
        # nothing is shared with other processes, so accelerate's settings start afresh
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu",
                           gradient_accumulation_steps=gradient_accumulation_steps)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        raise SettingError(f"{field}={precision!r} differs from the mixed precision accelerate was launched with "
                           "(accelerate allows one per process). Use the same value, or launch with "
                           f"--mixed_precision {mixed_precision}.") from None


def process_state(device: torch.device) -> PartialState:
    """accelerate's state of this process (the one ``accelerate launch`` set up, else a plain single process)."""
    return PartialState(cpu=device.type == "cpu")


def checked_main_first(check: Callable[[], T], device: torch.device) -> T:
    """``check()`` run by the main process first, then by the others (it may repair files, e.g. an interrupted
    model swap, which one process alone must do); in a plain process, just ``check()``."""
    with process_state(device).main_process_first():
        return check()


def train_diffusion(training: DiffusionTraining, accelerator: Accelerator, *, train_steps: int, checkpoint_every: int,
                    checkpoints: StepCheckpoints, model_dir: Path, progress: bool = True,
                    desc: str = "train") -> None:
    """Trains ``training.model`` for ``train_steps`` steps, resuming from the newest checkpoint in
    ``checkpoints``, and installs the final model in ``model_dir`` (written to ``<model_dir>.partial``, then
    swapped in; the checkpoints are deleted once it is in place). Every process must call it.

    Raises:
        CheckpointError: if the newest checkpoint cannot be read (the message says what to delete).
    """
    t = training
    params = list(t.params) if t.params is not None else [p for p in t.model.parameters() if p.requires_grad]
    with accelerator.main_process_first():  # the main process drops unfinished checkpoints before others read
        start = _resume(t, checkpoints, accelerator)
    model, optimizer = accelerator.prepare(t.model, t.optimizer)
    share = BatchShare(accelerator.process_index, accelerator.num_processes)
    model.train()
    bar = tqdm(range(start, train_steps), initial=start, total=train_steps, desc=desc, unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    for step in bar:
        for micro in range(t.gradient_accumulation_steps):
            g = torch.Generator().manual_seed(t.draw_seed(step, micro))
            with accelerator.accumulate(model):
                loss = t.loss(model, step, g, share)  # 1. this process's share of the step's batch
                accelerator.backward(loss)  # 2. fp16: scaled against underflow
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)  # 3. clip the unscaled gradients
                optimizer.step()  # 4. DDP has averaged the gradients; skipped when fp16 ones overflowed
                if accelerator.sync_gradients and not optimizer.step_was_skipped:
                    t.lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
        if t.ema is not None:
            t.ema.step(params)  # 5. EMA after each update
        if step % 25 == 0 or step + 1 == train_steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % checkpoint_every == 0 and step + 1 < train_steps:
            if accelerator.is_main_process:
                checkpoints.save(step + 1, lambda folder: t.write_checkpoint(folder, accelerator.unwrap_model(model),
                                                                             t.ema),
                                 t.optimizer, t.lr_schedule, accelerator.scaler, info=t.checkpoint_info)
            accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        if t.ema is not None:
            t.ema.copy_to(params)
        tmp = partial_folder(model_dir)
        t.write_model(tmp, unwrapped, t.ema)
        swap_in(tmp, model_dir)  # the old model stays until the new one is whole
        checkpoints.clear()
    accelerator.wait_for_everyone()


def _resume(t: DiffusionTraining, checkpoints: StepCheckpoints, accelerator: Accelerator) -> int:
    """Loads the newest complete checkpoint (weights, EMA, optimizer, schedule, loss scale); returns its step,
    0 when there is none. Only the main process deletes unfinished checkpoints."""
    found = checkpoints.restore(t.optimizer, t.lr_schedule, accelerator.scaler, check=t.check_checkpoint,
                                clean=accelerator.is_main_process)
    if found is None:
        return 0
    last, step = found
    with checkpoints.reading(last):
        t.read_checkpoint(last, t.model, t.ema)
    return step
