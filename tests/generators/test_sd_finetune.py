"""sd-finetune end to end on a tiny random-weight Stable Diffusion pipeline: export, LoRA and full fine-tuning
(the loss on fixed (noise, timestep) pairs goes down), saved weights reload and change the output, resume."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.generators.sd_common import load_pipeline
from synthaug.generators.sd_finetune import (
    LORA_WEIGHTS, diffusion_loss, encode_training_data, export_captioned_images,
)
from synthaug.plan import PlanItem
from synthaug.store import SyntheticStore

SCHEMA = LabelSchema.single(["cat", "dog", "golden_retriever"])


@pytest.fixture(scope="module")
def real() -> LabeledImages:
    """Six 16×16 images: reddish cats, bluish dogs (the rare classes) and two grey retrievers, striped."""
    pixels = np.full((6, 16, 16, 3), 60, np.uint8)
    pixels[:2, ..., 0] = 220
    pixels[2:4, ..., 2] = 220
    pixels[:, ::4] = 255
    return LabeledImages(schema=SCHEMA, labels=[[0], [0], [1], [1], [2], [2]],
                         ids=[f"img{i}" for i in range(6)], pixels=pixels)


def _config(tiny_sd_dir, **overrides):
    return {"model": str(tiny_sd_dir), "train_steps": 10, "batch_size": 4, "gradient_accumulation_steps": 1,
            "classes": ["cat", "dog"], "num_inference_steps": 2, **overrides}


def _fixed_pair_loss(unet, base, data_dir) -> float:
    """Denoising loss averaged over a fixed set of (image, noise, timestep) triples."""
    data = encode_training_data(base, data_dir, resolution=16)
    reps = 8
    latents = (data.latent_mean * data.scaling_factor).repeat(reps, 1, 1, 1)
    text = data.text_embeddings[data.caption_index].repeat(reps, 1, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, 1000, (len(latents),), generator=g)
    with torch.no_grad():
        return diffusion_loss(unet, DDPMScheduler.from_config(base.scheduler.config), latents, text, noise,
                              timesteps).item()


def test_export_writes_the_diffusers_training_format(real, tmp_path):
    names = ("cat", "cat", "dog", "dog", "golden retriever", "golden retriever")
    captions = [f"a photo of a {c}" for c in names]
    root = export_captioned_images(real, captions, tmp_path / "train")
    lines = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [rec["text"] for rec in lines] == captions
    assert lines[2]["id"] == "img2" and lines[2]["labels"] == {"label": "dog"}
    assert all((root / rec["file_name"]).is_file() for rec in lines)
    mtime = (root / "metadata.jsonl").stat().st_mtime_ns
    export_captioned_images(real, captions, root)  # unchanged: left as is
    assert (root / "metadata.jsonl").stat().st_mtime_ns == mtime
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    assert len(ds) == 6 and ds[0]["text"] == captions[0] and ds[0]["image"].size == (16, 16)


@pytest.mark.parametrize("mode, extra", [
    ("lora", {"learning_rate": 1e-2}),
    ("full", {"learning_rate": 1e-4, "ema": True, "ema_decay": 0.5, "gradient_checkpointing": True}),
])
def test_fine_tuning_lowers_the_loss_and_the_weights_reload(tiny_sd_dir, real, tmp_path, mode, extra):
    config = _config(tiny_sd_dir, mode=mode, **extra)
    gen = create_generator("sd-finetune", config, SCHEMA, workdir=tmp_path)
    assert not gen.is_fitted()
    gen.fit(real)
    assert gen.is_fitted()
    metadata = (tmp_path / "train_data" / "metadata.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in metadata]
    assert texts == ["a photo of a cat"] * 2 + ["a photo of a dog"] * 2  # the chosen classes only
    weights = LORA_WEIGHTS if mode == "lora" else "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "model" / weights).is_file() and not (tmp_path / "checkpoints").exists()

    base = load_pipeline(str(tiny_sd_dir), device=torch.device("cpu"))
    reloaded = create_generator("sd-finetune", config, SCHEMA, workdir=tmp_path)
    assert reloaded.is_fitted()
    stamp = (tmp_path / "model" / "synthaug.json").stat().st_mtime_ns
    reloaded.fit(real)  # already fitted: a no-op
    assert (tmp_path / "model" / "synthaug.json").stat().st_mtime_ns == stamp
    before = _fixed_pair_loss(base.unet, base, tmp_path / "train_data")
    after = _fixed_pair_loss(reloaded.pipeline().unet, base, tmp_path / "train_data")
    assert after < 0.99 * before, f"{mode}: loss on fixed pairs {before:.4f} -> {after:.4f}"

    items = [PlanItem("cat-0", (0,), 21), PlanItem("dog-0", (1,), 22)]
    tuned = [np.asarray(im, dtype=int) for im in reloaded.generate(items)]
    plain = create_generator("sd-text2img", {"model": str(tiny_sd_dir), "num_inference_steps": 2}, SCHEMA)
    untuned = [np.asarray(im, dtype=int) for im in plain.generate(items)]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(tuned, untuned))


def test_generation_fills_a_store_with_the_training_captions(tiny_sd_dir, real, tmp_path):
    gen = create_generator("sd-finetune", _config(tiny_sd_dir, train_steps=2), SCHEMA,
                           workdir=tmp_path / "work")
    gen.fit(real)
    items = [PlanItem("cat-0", (0,), 1), PlanItem("dog-0", (1,), 2), PlanItem("dog-1", (1,), 3)]
    store = SyntheticStore(tmp_path / "set", SCHEMA)
    assert fill_store(gen, items, store, batch_size=2, progress=False) == 3
    recs = store.records()
    assert [r["text"] for r in recs] == ["a photo of a cat", "a photo of a dog", "a photo of a dog"]
    assert {r["method"] for r in recs} == {"sd-finetune"} and recs[0]["finetune_mode"] == "lora"
    assert recs[0]["checkpoint"] == str(tmp_path / "work" / "model")
    assert all(store.root.joinpath(r["file_name"]).is_file() for r in recs)


def test_interrupted_training_resumes_to_the_same_weights(tiny_sd_dir, real, tmp_path, monkeypatch, caplog):
    cfg = _config(tiny_sd_dir, train_steps=4, checkpoint_every=2, learning_rate=1e-2, batch_size=2)
    straight = create_generator("sd-finetune", cfg, SCHEMA, workdir=tmp_path / "straight", seed=5)
    straight.fit(real)

    interrupted = create_generator("sd-finetune", cfg, SCHEMA, workdir=tmp_path / "resumed", seed=5)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(type(interrupted), "_save_final", crash)
        with pytest.raises(KeyboardInterrupt):
            interrupted.fit(real)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000002"]
    assert not interrupted.is_fitted()
    with caplog.at_level(logging.INFO, logger="synthaug.generators.sd_finetune"):
        interrupted.fit(real)
    assert "(step 2)" in caplog.text  # resumed, not restarted

    a = load_file(tmp_path / "straight" / "model" / LORA_WEIGHTS)
    b = load_file(tmp_path / "resumed" / "model" / LORA_WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_a_checkpoint_from_before_the_shared_loop_resumes_with_its_ema(tiny_sd_dir, real, tmp_path, monkeypatch):
    """Checkpoints written before ``ema.json`` existed kept the EMA's counters in ``state.json``["ema"]."""
    cfg = _config(tiny_sd_dir, mode="full", train_steps=4, checkpoint_every=2, learning_rate=1e-4, batch_size=2,
                  ema=True, ema_decay=0.5)
    create_generator("sd-finetune", cfg, SCHEMA, workdir=tmp_path / "straight", seed=5).fit(real)
    old = create_generator("sd-finetune", cfg, SCHEMA, workdir=tmp_path / "old", seed=5)
    with monkeypatch.context() as m:
        m.setattr(type(old), "_save_final", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            old.fit(real)
    ckpt = tmp_path / "old" / "checkpoints" / "step-0000002"
    state = json.loads((ckpt / "state.json").read_text())
    state["ema"] = json.loads((ckpt / "ema.json").read_text())
    (ckpt / "state.json").write_text(json.dumps(state))
    (ckpt / "ema.json").unlink()  # the old layout
    old.fit(real)
    weights = "model/unet/diffusion_pytorch_model.safetensors"  # the EMA weights, copied in at the end
    a, b = load_file(tmp_path / "straight" / weights), load_file(tmp_path / "old" / weights)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_changed_settings_do_not_resume_silently(tiny_sd_dir, real, tmp_path, monkeypatch):
    cfg = _config(tiny_sd_dir, train_steps=4, checkpoint_every=2, batch_size=2)
    gen = create_generator("sd-finetune", cfg, SCHEMA, workdir=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(type(gen), "_save_final", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            gen.fit(real)
    changed = create_generator("sd-finetune", {**cfg, "lora_rank": 8}, SCHEMA, workdir=tmp_path)
    with pytest.raises(ValueError, match="lora_rank"):
        changed.fit(real)


def test_user_errors_are_clear(tiny_sd_dir, real, tmp_path):
    gen = create_generator("sd-finetune", _config(tiny_sd_dir, classes=["cow"]), SCHEMA, workdir=tmp_path)
    with pytest.raises(ValueError, match="cow"):
        gen.fit(real)
    gen = create_generator("sd-finetune", _config(tiny_sd_dir), SCHEMA, workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match="run fit first"):
        gen.generate([PlanItem("a", (0,), 1)])
    with pytest.raises(ValueError, match="generator.params.mode"):
        create_generator("sd-finetune", {"model": "m", "mode": "dreambooth"}, SCHEMA)
    config = _config(tiny_sd_dir, mixed_precision="fp16")
    gen = create_generator("sd-finetune", config, SCHEMA, workdir=tmp_path)
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        gen.fit(real)


def test_progress_false_silences_the_fine_tuning_bar(tiny_sd_dir, real, tmp_path, capsys):
    for progress in (True, False):
        gen = create_generator("sd-finetune", _config(tiny_sd_dir, train_steps=1), SCHEMA,
                               workdir=tmp_path / str(progress), progress=progress)
        gen.fit(real)
        assert ("fine-tune sd" in capsys.readouterr().err) == progress


def test_an_interrupted_model_swap_keeps_the_new_model(tiny_sd_dir, real, tmp_path):
    """A crash between renaming the old model aside and the new one in: the complete new model is taken."""
    import shutil

    gen = create_generator("sd-finetune", _config(tiny_sd_dir, train_steps=1), SCHEMA, workdir=tmp_path,
                           progress=False)
    gen.fit(real)
    shutil.copytree(tmp_path / "model", tmp_path / "model.partial")
    (tmp_path / "model").rename(tmp_path / "model.old")
    again = create_generator("sd-finetune", _config(tiny_sd_dir, train_steps=1), SCHEMA, workdir=tmp_path)
    assert again.is_fitted()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model")) == ["model"]
