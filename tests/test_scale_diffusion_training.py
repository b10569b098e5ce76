"""Diffusion training under ``accelerate launch`` (#10): two CPU processes (gloo) fit one tiny DDPM through the
generator stage, each training its rows of every batch; the main process's model equals a single-process fit."""

import json

import torch
import yaml
from diffusers import UNet2DModel

from synthaug.cli import main
from test_scale_training import _launch

TINY = {
    "name": "tiny", "seeds": [0], "progress": False, "device": "cpu",
    "data": {"source": "digits", "longtail": {"imbalance_ratio": 20}},
    # an odd batch: the processes take 4 and 3 rows, weighted so that the mean gradient is the whole batch's
    "generator": {"name": "ddpm", "params": {"block_out_channels": [8, 16], "layers_per_block": 1,
                                             "norm_num_groups": 2, "train_steps": 4, "checkpoint_every": 2,
                                             "batch_size": 7, "warmup_steps": 1, "sampling_steps": 2,
                                             "precision": "fp32"}},
    "plan": {"strategy": "fixed", "counts": {"9": 2}},
    "evaluation": {"enabled": False},
}


def test_two_processes_fit_the_single_process_ddpm(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / name)}))
    assert main(["generate", str(tmp_path / "one.yaml")]) == 0
    _launch("-m", "synthaug", "generate", str(tmp_path / "two.yaml"), cwd=tmp_path)
    one, two = (tmp_path / name / "tiny" / "generator" for name in ("one", "two"))
    assert json.loads((two / "done.json").read_text())["generator"] == "ddpm"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # no checkpoints left
    a = UNet2DModel.from_pretrained(one / "model" / "unet").state_dict()
    b = UNet2DModel.from_pretrained(two / "model" / "unet").state_dict()
    assert a.keys() == b.keys()
    for k in a:  # equal up to the order of float sums (DDP's all-reduce), whose error Adam scales by lr / |grad|:
        # softmax ignores a key bias, so its gradient is rounding noise alone and its steps differ most
        atol = 1e-4 if k.endswith("to_k.bias") else 1e-6
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=atol, msg=k)
