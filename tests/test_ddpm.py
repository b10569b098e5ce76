import numpy as np
import pytest
import torch

from synthaug.data import load_source
from synthaug.generators import create_generator
from synthaug.plan import make_items, unconditional_items

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "batch_size": 16, "sampling_steps": 3,
        "checkpoint_every": 4, "precision": "fp32"}


@pytest.fixture(scope="module")
def digits():
    return load_source("digits").train


def test_item_images_do_not_depend_on_batch_size(digits, tmp_path):
    g = create_generator("ddpm", {**TINY, "train_steps": 2}, digits.schema, workdir=tmp_path)
    g.fit(digits)
    items = make_items(digits.schema, [1] * 10, seed=0)[:5] + unconditional_items(1, seed=0)
    together = g.generate(items)
    apart = g.generate(items[:1]) + g.generate(items[1:4]) + g.generate(items[4:])
    assert together[0].size == (8, 8) and together[0].mode == "L"
    for a, b in zip(together, apart):
        assert (np.asarray(a) == np.asarray(b)).all()
    assert not (np.asarray(together[0]) == np.asarray(together[1])).all()


def test_resume_after_interruption_matches_uninterrupted_run(digits, tmp_path):
    from diffusers import UNet2DModel

    cfg = {**TINY, "train_steps": 8, "checkpoint_every": 4}
    create_generator("ddpm", cfg, digits.schema, workdir=tmp_path / "a", seed=1).fit(digits)

    class Killed(Exception):
        pass

    half = create_generator("ddpm", cfg, digits.schema, workdir=tmp_path / "b", seed=1)
    save = half._save_checkpoint

    def save_then_die(*args):
        save(*args)
        raise Killed

    half._save_checkpoint = save_then_die
    with pytest.raises(Killed):
        half.fit(digits)
    assert (tmp_path / "b" / "checkpoints" / "step-0000004").is_dir()
    assert not half.is_fitted()
    resumed = create_generator("ddpm", cfg, digits.schema, workdir=tmp_path / "b", seed=1)
    resumed.fit(digits)
    assert resumed.is_fitted() and not (tmp_path / "b" / "checkpoints").exists()
    a = UNet2DModel.from_pretrained(tmp_path / "a" / "model" / "unet").state_dict()
    b = UNet2DModel.from_pretrained(tmp_path / "b" / "model" / "unet").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_classifier_free_guidance_changes_samples(digits, tmp_path):
    g = create_generator("ddpm", {**TINY, "train_steps": 2}, digits.schema, workdir=tmp_path)
    g.fit(digits)
    items = make_items(digits.schema, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0], seed=0)
    plain = np.asarray(g.generate(items)[0], dtype=int)
    g.config.guidance_scale = 5.0
    guided = np.asarray(g.generate(items)[0], dtype=int)
    assert np.abs(plain - guided).max() > 0


def test_unconditional_model_refuses_labelled_items(digits, tmp_path):
    g = create_generator("ddpm", {**TINY, "train_steps": 1, "conditional": False}, digits.schema, workdir=tmp_path)
    g.fit(digits)
    assert len(g.generate(unconditional_items(2, seed=0))) == 2
    with pytest.raises(ValueError, match="pseudo-label"):
        g.generate(make_items(digits.schema, [1] + [0] * 9, seed=0))


def test_missing_model_is_a_clear_error(digits, tmp_path):
    g = create_generator("ddpm", {**TINY, "checkpoint": str(tmp_path / "nowhere")}, digits.schema, workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        g.generate(make_items(digits.schema, [1] + [0] * 9, seed=0))


def test_bad_param_names_the_field():
    with pytest.raises(ValueError, match=r"generator\.params\.sampling_steps"):
        create_generator("ddpm", {"sampling_steps": 0}, load_source("digits").schema)
    with pytest.raises(ValueError, match=r"generator\.params\.nonsense"):
        create_generator("ddpm", {"nonsense": 1}, load_source("digits").schema)
