"""Every Stable Diffusion-family generator end to end through the CLI (`synthaug generate` and `synthaug run`)
on a tiny image folder and tiny random-weight pipelines: the config path users take."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_unclip import build_tiny_unclip_pipeline

from synthaug.cli import main


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    return build_tiny_unclip_pipeline(tmp_path_factory.mktemp("tiny-unclip") / "pipeline")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "images"
    rng = np.random.default_rng(0)
    for name, n, colour in (("cat", 9, (200, 40, 40)), ("dog", 6, (40, 200, 40)), ("owl", 4, (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = np.clip(np.array(colour) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def _params(name, tiny_sd_dir, unclip_dir):
    return {
        "sd-text2img": {"model": str(tiny_sd_dir), "num_inference_steps": 2},
        "sd-finetune": {"model": str(tiny_sd_dir), "mode": "lora", "train_steps": 2, "batch_size": 2,
                        "gradient_accumulation_steps": 1, "num_inference_steps": 2, "classes": ["owl"]},
        "mvc": {"model": str(tiny_sd_dir), "mode": "finetuned", "train_steps": 2, "batch_size": 2,
                "num_inference_steps": 2, "resolution": 32},
        "unclip-augcond": {"model": str(unclip_dir), "method": "embed-cutmix-dropout", "num_inference_steps": 2},
    }[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd-text2img", "sd-finetune", "mvc", "unclip-augcond"])
def test_generate_through_the_cli(name, folder, tiny_sd_dir, unclip_dir, tmp_path, capsys):
    config = {
        "name": name, "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"source": "imagefolder", "root": str(folder), "test_per_class": 1, "val_per_class": 1},
        "generator": {"name": name, "params": _params(name, tiny_sd_dir, unclip_dir)},
        "plan": {"strategy": "fixed", "counts": {"owl": 3, "dog": 1}, "batch_size": 2},
        "train": {"epochs": 1, "batch_size": 8},
        "judge": {"enabled": False},
        "evaluation": {"enabled": False},  # the studies are tested in test_report.py
        "arms": [{"name": "real-ce"},
                 {"name": "combined", "synthetic": "generated", "train": {"mixing": "combined"}},
                 {"name": "pseudo-combined", "synthetic": "pseudo", "train": {"mixing": "combined"}}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["generate", str(path)]) == 0
    store = tmp_path / "runs" / name / "synthetic"
    lines = [json.loads(line) for line in (store / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["item_id"] for r in lines) == ["dog-00000", "owl-00000", "owl-00001", "owl-00002"]
    assert all(r["method"] == name and isinstance(r["seed"], int) for r in lines)
    size = Image.open(store / lines[0]["file_name"]).size
    assert size[0] == size[1] and size[0] in (16, 32)
    # the same config then trains and evaluates a classifier on real + these images, and the control arm
    # runs where the generator has a class-agnostic control, else it is left out with the reason in the table
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| combined |" in out
    if name == "mvc":
        assert "| pseudo-combined |" not in out and "Arm pseudo-combined left out" in out
    else:
        assert "| pseudo-combined |" in out and "Control arms (synthetic: pseudo):" in out
