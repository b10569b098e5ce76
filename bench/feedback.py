"""The sampling cost of classifier-feedback guidance in the ddpm sampler (issue 25).

    .venv/bin/python bench/feedback.py [--images 128] [--train-steps 20] [--repeats 2] [--threads 1] [--precision auto]

Builds the demo's generator (configs/demo.yaml: UNet [32, 64, 64] × 2 layers on MNIST 28×28, DPM-Solver++ 8 steps
on trailing timesteps, guidance 1.0, precision auto) trained for only ``--train-steps`` steps on the mnist5k
training images (sampling cost does not depend on how well it is trained), and the demo's small-CNN classifier
trained for 30 steps on the same images and saved as synthaug's training saves it. It then samples the same
``--images`` items (one batch; the demo's plan.batch_size is 128) without and with ``feedback`` and prints images
per second of CPU time of this process (best of ``--repeats`` timed batches, after a warm-up batch) on
``--threads`` torch threads, and the cost relative to unguided sampling. CPU time, not wall time: on a machine
shared with other work wall time measures the neighbours; with one thread it is the sampler's own compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synthaug.data import load_source
from synthaug.generators import create_generator
from synthaug.imaging import load_tensor
from synthaug.plan import make_items
from synthaug.torch_utils import resolve_precision
from synthaug.train.config import ModelConfig
from synthaug.train.models import create_classifier, save_classifier

sys.path.insert(0, str(Path(__file__).parent))
from demo_budget import cpu_model  # noqa: E402

DEMO = {"block_out_channels": [32, 64, 64], "layers_per_block": 2, "norm_num_groups": 8, "batch_size": 64,
        "sampler": "dpmsolver++", "sampling_steps": 8, "guidance_scale": 1.0, "precision": "auto"}
ROWS = [("no feedback", None),
        ("loss, every step", {"criterion": "loss"}),
        ("entropy, every step", {"criterion": "entropy"}),
        ("hardness, every step", {"criterion": "hardness"}),
        ("loss, every 2nd step", {"criterion": "loss", "every": 2}),
        ("loss, first half [0, 0.5]", {"criterion": "loss", "steps": [0.0, 0.5]})]


def train_classifier(real, folder: Path, steps: int = 30) -> None:
    torch.manual_seed(0)
    config = ModelConfig(name="small-cnn")
    model = create_classifier(config, real.schema, in_chans=1)
    x, y = (load_tensor(real) - 0.5) / 0.5, torch.as_tensor(real.labels[:, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_classifier(model.eval(), config, real.schema, 1, x.shape[-1], folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="items per timed batch")
    parser.add_argument("--train-steps", type=int, default=20, help="generator training steps (cost only)")
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per row (the best is printed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="sampling precision (auto: bf16 where the CPU runs it natively, as the demo)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    real = load_source("mnist5k").train
    work = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    gen = create_generator("ddpm", {**DEMO, "train_steps": args.train_steps}, real.schema, workdir=work / "ddpm",
                           progress=False)
    gen.fit(real)
    train_classifier(real, work / "classifier")
    classes = len(real.schema.groups[0].classes)
    items = make_items(real.schema, [args.images // classes + 1] * classes, seed=12345)[:args.images]
    print(f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}; "
          f"precision: "
          f"{resolve_precision(args.precision, torch.device('cpu'))}; {len(real)} training images 28×28; "
          f"DPM-Solver++ 8 steps, trailing; feedback scale 0.1; batch {len(items)}")
    print("| sampling | img per CPU-second | time × unguided |")
    print("|---|---|---|")
    base = None
    for label, feedback in ROWS:
        settings = {**DEMO, "precision": args.precision, "checkpoint": str(work / "ddpm" / "model"),
                    "feedback": None if feedback is None else {"classifier": str(work / "classifier"), **feedback}}
        g = create_generator("ddpm", settings, real.schema, workdir=work / "sample", progress=False)
        g.use_real(real)
        g.sample(items[:8])  # warm-up: loading, the classifier (and hardness's class statistics), kernels
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            g.sample(items)
            times.append(time.process_time() - start)
        rate = len(items) / min(times)
        base = base or rate
        print(f"| {label} | {rate:.1f} | {base / rate:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
