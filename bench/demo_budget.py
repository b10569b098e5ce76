"""Cost of the demo's generator on this machine: DDPM training step and sampling throughput, per precision and
UNet size, so the demo can be budgeted for CPUs with and without native bf16.

    .venv/bin/python bench/demo_budget.py [--channels 32,64,64 --channels 24,48,48] [--steps 5]

Prints, per UNet (block_out_channels) and precision: seconds per training step at batch 64 on 28×28
grayscale, and images/s for DPM-Solver++ sampling with guidance (two UNet passes per step), plus the CPU
model and whether it has native bf16 (`precision: auto` picks bf16 only then). Random weights: cost does not
depend on them.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import torch.nn.functional as F

from synthaug.data.schema import LabelSchema
from synthaug.generators.ddpm import DDPMConfig, DDPMGenerator
from synthaug.plan import make_items
from synthaug.torch_utils import autocast, cpu_has_native_bf16


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (a virtual machine may name it just "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def time_training(gen: DDPMGenerator, precision: str, steps: int, batch: int = 64) -> float:
    unet = gen._build_unet(1, 28)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 11, (batch,))
    t = torch.randint(0, 1000, (batch,))

    def step():
        with autocast(torch.device("cpu"), precision):
            pred = unet(x, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def time_sampling(gen: DDPMGenerator, precision: str, sampling_steps: int, n: int = 128) -> float:
    import tempfile

    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        unet = gen._build_unet(1, 28)
        model = Path(tmp) / "model"
        unet.save_pretrained(model / "unet")
        gen._noise_scheduler().save_pretrained(model / "scheduler")
        cfg = gen.config.model_copy(update={"precision": precision, "sampling_steps": sampling_steps,
                                            "checkpoint": str(model)})
        sampler = DDPMGenerator(cfg, gen.schema, device=torch.device("cpu"), workdir=Path(tmp))
        sampler._unet = unet.eval()
        items = make_items(gen.schema, [n // 10] * 10, seed=0)
        sampler.generate(items[:8])  # warm-up
        start = time.perf_counter()
        sampler.generate(items)
        return len(items) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", action="append", default=[], help="block_out_channels, e.g. 32,64,64")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--sampling-steps", type=int, default=15)
    args = parser.parse_args(argv)
    schema = LabelSchema.single([str(d) for d in range(10)], name="digit")
    print(f"CPU: {cpu_model()}; native bf16: {cpu_has_native_bf16()}; torch threads: {torch.get_num_threads()}")
    print("| block_out_channels | precision | train s/step (batch 64) | sampling img/s "
          f"(DPM-Solver++ {args.sampling_steps} steps, guided) |")
    print("|---|---|---|---|")
    for spec in args.channels or ["32,64,64"]:
        channels = tuple(int(c) for c in spec.split(","))
        for precision in ("fp32", "bf16"):
            gen = DDPMGenerator(DDPMConfig(block_out_channels=channels, precision=precision), schema,
                                device=torch.device("cpu"), workdir=".")
            step = time_training(gen, precision, args.steps)
            rate = time_sampling(gen, precision, args.sampling_steps)
            print(f"| {list(channels)} | {precision} | {step:.3f} | {rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
