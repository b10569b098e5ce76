"""The shared diffusion training loop (generators/diffusion_training.py) on a toy regression, in one process: batch
shares, exact resume with gradient accumulation, one schedule and EMA step per update, the final model's install."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from synthaug.errors import SettingError
from synthaug.train.checkpoint import StepCheckpoints
from synthaug.generators.diffusion_training import (
    BatchShare, DiffusionTraining, make_accelerator, train_diffusion,
)

BATCH = 5


@pytest.mark.parametrize("count", [1, 2, 3])
def test_shares_partition_the_batch_and_their_weighted_losses_average_to_the_batch_mean(count):
    rows = torch.arange(7.0)
    shares = [BatchShare(r, count) for r in range(count)]
    assert sorted(torch.cat([s.take(rows) for s in shares]).tolist()) == rows.tolist()
    # DDP averages the processes' gradients: their weighted means must average to the whole batch's mean
    mean = sum(s.weight(s.take(rows).mean(), len(rows)) for s in shares) / count
    assert torch.isclose(mean, rows.mean())
    with pytest.raises(SettingError, match="batch_size"):
        BatchShare(0, 8).check(7, "generator.params.batch_size")


class Interrupted(Exception):
    pass


def _train(workdir, *, accumulation=2, steps=5, crash_at=None, write_model=None, draws=None):
    """Fits y = x·w on 12 random points with the loop; returns the EMA model and what it recorded."""
    torch.manual_seed(0)
    x, w = torch.randn(12, 3), torch.tensor([[1.0], [-2.0], [0.5]])
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    ema = EMAModel(model.parameters(), decay=0.9)

    def loss(m, step, g, share):
        if step == crash_at:
            raise Interrupted
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        noise = torch.randn(BATCH, 1, generator=g) * 0.01
        xs, ys = share.take(x[idx]), share.take(x[idx] @ w + noise)
        return share.weight(F.mse_loss(m(xs), ys), BATCH)

    def record(step, micro):
        if draws is not None:
            draws.append((step, micro))
        return 1000 * step + micro

    def save_weights(folder, m, e):
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, folder / "model.safetensors")
        torch.save(e.state_dict(), folder / "ema.pt")

    def read_weights(folder, m, e):
        m.load_state_dict(load_file(folder / "model.safetensors"))
        e.load_state_dict(torch.load(folder / "ema.pt", weights_only=True))

    training = DiffusionTraining(
        model=model, optimizer=optimizer, lr_schedule=torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, 10),
        loss=loss, draw_seed=record, ema=ema, gradient_accumulation_steps=accumulation,
        write_checkpoint=save_weights, read_checkpoint=read_weights, write_model=write_model or save_weights)
    accelerator = make_accelerator("fp32", torch.device("cpu"), gradient_accumulation_steps=accumulation,
                                   field="params.precision")
    train_diffusion(training, accelerator, train_steps=steps, checkpoint_every=2, progress=False,
                    checkpoints=StepCheckpoints(workdir / "checkpoints"), model_dir=workdir / "model")
    return model, training


def test_accumulated_training_resumes_exactly_and_steps_schedule_and_ema_once_per_update(tmp_path):
    draws = []
    model, training = _train(tmp_path / "straight", draws=draws)
    assert draws == [(s, m) for s in range(5) for m in range(2)]  # one seeded draw per micro-step
    assert training.lr_schedule.last_epoch == 5 and training.ema.optimization_step == 5  # per update
    saved = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # the EMA weights, installed
    assert not (tmp_path / "straight" / "checkpoints").exists()

    with pytest.raises(Interrupted):
        _train(tmp_path / "resumed", crash_at=3)  # after the step-2 checkpoint
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000002"]
    draws = []
    _train(tmp_path / "resumed", draws=draws)
    assert draws[0] == (2, 0)  # resumed, not restarted
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


def test_a_failed_final_write_keeps_the_old_model_and_the_checkpoints(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old model")

    def fail(folder, m, e):
        (folder / "half-written").write_text("")
        raise Interrupted

    with pytest.raises(Interrupted):
        _train(tmp_path, accumulation=1, write_model=fail)
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["old.txt"]
    assert (tmp_path / "checkpoints" / "step-0000004").is_dir()


def test_accelerator_precision_can_change_in_a_plain_process_and_fp16_needs_cuda():
    for precision in ("bf16", "fp32"):
        accelerator = make_accelerator(precision, torch.device("cpu"), field="generator.params.precision")
        assert accelerator.mixed_precision == {"bf16": "bf16", "fp32": "no"}[precision]
    with pytest.raises(SettingError, match=r"generator.params.precision='fp16' needs a CUDA"):
        make_accelerator("fp16", torch.device("cpu"), field="generator.params.precision")
