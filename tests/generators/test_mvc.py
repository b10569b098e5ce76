"""mvc end to end on tiny random-weight Stable Diffusion (and BLIP-2) models, offline on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig, Blip2VisionConfig,
    BlipImageProcessor, OPTConfig,
)

import synthaug.generators.mvc as mvc_module
from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.generators.mvc import add_image_channels, instruct_pix2pix_loss
from synthaug.plan import PlanItem, make_items
from synthaug.store import SyntheticStore
from tiny_sd import tiny_clip_tokenizer

SCHEMA = LabelSchema.single(["cat", "dog", "bird"])
CAT, DOG = {"real-0", "real-1", "real-2"}, {"real-3", "real-4"}
SIZE = 32
PRETRAINED = {"mode": "pretrained", "caption_template": "a photo of a {class}"}
TRAIN = {"train_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones (the CI box has 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    """A tiny random BLIP-2 (CLIP-BPE tokenizer, 1-layer OPT). Wide initialisation makes its greedy captions
    differ from image to image, so the caption embeddings of one class differ."""
    path = tmp_path_factory.mktemp("tiny-blip2")
    tokenizer = tiny_clip_tokenizer(path / "tokenizer")
    image_processor = BlipImageProcessor(size={"height": SIZE, "width": SIZE})
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=2)
    tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                initializer_range=1.0)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(image_size=SIZE, patch_size=8, **tiny).to_dict(),
        qformer_config=Blip2QFormerConfig(encoder_hidden_size=32, vocab_size=len(tokenizer),
                                          **tiny).to_dict(),
        text_config=OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=37,
                              num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1, init_std=1.0).to_dict(),
        num_query_tokens=2, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=1.0,
    )
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def real() -> LabeledImages:
    """Three cats and two dogs (no bird), 32 × 32 RGB."""
    pixels = (np.random.default_rng(0).random((5, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    return LabeledImages(SCHEMA, labels=[[0], [0], [0], [1], [1]], ids=[f"real-{i}" for i in range(5)],
                         pixels=pixels)


def _params(sd_dir, **params):
    return {"model": str(sd_dir), "num_inference_steps": 2, "resolution": SIZE, **params}


def _generator(sd_dir, workdir, **params):
    return create_generator("mvc", _params(sd_dir, **params), SCHEMA, workdir=workdir, seed=0)


@pytest.fixture(scope="module")
def finetuned(tiny_sd_dir, blip2_dir, real, tmp_path_factory):
    """The workdir of an mvc model fine-tuned for 4 steps on the tiny set, with BLIP-2 captions."""
    workdir = tmp_path_factory.mktemp("mvc-finetuned")
    _generator(tiny_sd_dir, workdir, mode="finetuned", captioner=str(blip2_dir), **TRAIN).fit(real)
    return workdir


def _items():
    return make_items(SCHEMA, [2, 1, 0], seed=3)


def _fill_twice(gen, tmp_path):
    """The plan through fill_store with batch size 3 and 1; checks the two agree and returns the records."""
    items = _items()
    batched, single = SyntheticStore(tmp_path / "b3", SCHEMA), SyntheticStore(tmp_path / "b1", SCHEMA)
    assert fill_store(gen, items, batched, batch_size=3, progress=False) == 3
    assert fill_store(gen, items, single, batch_size=1, progress=False) == 3
    assert batched.records() == single.records()  # same sources, captions, seeds: every draw is per item
    lines = [json.loads(line) for line in batched.metadata_path.read_text().splitlines()]
    assert [rec["item_id"] for rec in lines] == [it.item_id for it in items]
    a, b = batched.load(), single.load()
    for i in range(len(items)):
        x, y = np.asarray(a.image(i)), np.asarray(b.image(i))
        assert x.shape == (SIZE, SIZE, 3)
        # equal up to float rounding (batched kernels may sum in another order), as in sd-text2img's test
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert not np.array_equal(np.asarray(a.image(0)), np.asarray(a.image(1)))
    for rec in lines:
        assert rec["method"] == "mvc" and rec["coarse_steps"] == 1 and rec["fine_steps"] == 5
        assert set(rec["source_ids"]) <= {"cat": CAT, "dog": DOG}[rec["label"]]
        assert rec["text"].startswith(f"This is an image of {rec['label']}")
    return lines


def test_pretrained_mode_end_to_end(tiny_sd_dir, real, tmp_path):
    gen = _generator(tiny_sd_dir, tmp_path / "work", **PRETRAINED)
    assert not gen.is_fitted()
    gen.fit(real)
    assert gen.is_fitted()
    lines = _fill_twice(gen, tmp_path)
    assert lines[0]["text"] == "This is an image of cat, a photo of a cat"
    assert lines[0]["mode"] == "pretrained" and "condition_image_id" not in lines[0]
    again = _generator(tiny_sd_dir, tmp_path / "work", **PRETRAINED)
    assert again.is_fitted()  # a restart reloads captions, embeddings and images from the workdir
    first = SyntheticStore(tmp_path / "b1", SCHEMA).load(ids=["cat-00000"]).image(0)
    assert np.array_equal(np.asarray(again.generate(_items()[:1])[0]), np.asarray(first))


def test_finetuned_mode_end_to_end_after_restart(tiny_sd_dir, blip2_dir, finetuned, tmp_path):
    model = finetuned / "model"
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((model / "unet" / "config.json").read_text())["in_channels"] == 8
    assert not (finetuned / "checkpoints").exists()  # removed once the final model is saved
    gen = _generator(tiny_sd_dir, finetuned, mode="finetuned", captioner=str(blip2_dir), **TRAIN)
    assert gen.is_fitted()  # nothing to train again
    for rec in _fill_twice(gen, tmp_path):
        assert rec["mode"] == "finetuned" and rec["image_guidance_scale"] == 1.5
        assert rec["source_ids"][0] == rec["condition_image_id"]
        assert rec["condition_image_id"] in {"cat": CAT, "dog": DOG}[rec["label"]]


def test_mixed_embeddings_take_every_value_from_their_class(tiny_sd_dir, blip2_dir, finetuned):
    gen = _generator(tiny_sd_dir, finetuned, mode="finetuned", captioner=str(blip2_dir), coarse_steps=3,
                     fine_steps=20, **TRAIN)
    captions = json.loads((finetuned / "captions.json").read_text())
    assert len(set(captions.values())) == 5  # BLIP-2 gave every image its own caption
    embeds = gen._load_data()[2]
    cat, dog = embeds["class/0"], embeds["class/1"]
    assert cat.shape[0] == 3 and dog.shape[0] == 2 and cat.shape[1] == 77
    mixed_any = False
    for k in range(8):
        item = PlanItem(f"cat-{k}", (0,), seed=k)
        embedding, _, info = gen.condition(item)
        assert embedding.shape == cat.shape[1:]
        assert (embedding[None] == cat).any(0).all(), "a value does not come from this class's captions"
        assert set(info["caption_source_ids"]) <= CAT
        mixed_any |= not any(torch.equal(embedding, e) for e in cat)
    assert mixed_any
    plain = _generator(tiny_sd_dir, finetuned, mode="finetuned", captioner=str(blip2_dir), coarse_steps=0,
                       fine_steps=0, **TRAIN)
    embedding, _, info = plain.condition(PlanItem("dog-0", (1,), seed=1))
    assert len(info["caption_source_ids"]) == 1 and any(torch.equal(embedding, e) for e in dog)


def test_image_channels_start_as_a_no_op(tiny_sd_dir):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    wide = add_image_channels(UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet"))
    assert wide.config.in_channels == 8 and wide.conv_in.in_channels == 8
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        base = unet(x, 10, text).sample
        for condition in (torch.zeros(2, 4, 8, 8), torch.randn(2, 4, 8, 8)):
            assert torch.allclose(wide(torch.cat([x, condition], 1), 10, text).sample, base, atol=1e-6)


def test_finetuning_lowers_the_loss_and_the_saved_weights_change_the_output(
    tiny_sd_dir, blip2_dir, real, finetuned, tmp_path,
):
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    gen = _generator(tiny_sd_dir, finetuned, mode="finetuned", captioner=str(blip2_dir), batch_size=5, **{
        k: v for k, v in TRAIN.items() if k != "batch_size"})
    empty = gen._load_data()[2]["empty"]
    batch = gen._training_batch(0, base.vae, empty, SIZE, 1000)  # fixed latents, condition, text, noise, t
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    before = add_image_channels(base.unet).eval()
    after = UNet2DConditionModel.from_pretrained(finetuned / "model" / "unet").eval()  # reloaded from disk
    with torch.no_grad():
        loss_before = instruct_pix2pix_loss(before, scheduler, *batch).item()
        loss_after = instruct_pix2pix_loss(after, scheduler, *batch).item()
    assert loss_after < loss_before
    untrained = _generator(tiny_sd_dir, tmp_path / "untrained", mode="finetuned", captioner=str(blip2_dir),
                           **{**TRAIN, "train_steps": 0})
    untrained.fit(real)
    trained = _generator(tiny_sd_dir, finetuned, mode="finetuned", captioner=str(blip2_dir), **TRAIN)
    item = _items()[:1]
    assert not np.array_equal(np.asarray(trained.generate(item)[0]), np.asarray(untrained.generate(item)[0]))


def test_interrupted_finetuning_resumes_to_the_same_weights(
    tiny_sd_dir, blip2_dir, real, finetuned, tmp_path, monkeypatch,
):
    calls = {"n": 0}
    loss = mvc_module.instruct_pix2pix_loss

    def crash_on_step_four(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return loss(*args)

    gen = _generator(tiny_sd_dir, tmp_path / "work", mode="finetuned", captioner=str(blip2_dir), **TRAIN)
    monkeypatch.setattr(mvc_module, "instruct_pix2pix_loss", crash_on_step_four)
    with pytest.raises(KeyboardInterrupt):
        gen.fit(real)
    assert [p.name for p in (tmp_path / "work" / "checkpoints").iterdir()] == ["step-0000002"]
    assert not gen.is_fitted()
    calls["n"] = -100  # no crash now; count the steps the second fit runs
    gen.fit(real)
    assert calls["n"] == -100 + 2, "fit did not resume at step 2"
    resumed = UNet2DConditionModel.from_pretrained(tmp_path / "work" / "model" / "unet").state_dict()
    straight = UNet2DConditionModel.from_pretrained(finetuned / "model" / "unet").state_dict()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_clear_errors(tiny_sd_dir, real, tmp_path):
    gen = _generator(tiny_sd_dir, tmp_path / "w1", mode="pretrained")
    with pytest.raises(FileNotFoundError, match="run fit"):
        gen.generate(_items()[:1])
    gen.fit(real)
    with pytest.raises(ValueError, match="no real image"):
        gen.generate([PlanItem("bird-0", (2,), seed=0)])
    with pytest.raises(FileNotFoundError, match="captioner"):
        _generator(tiny_sd_dir, tmp_path / "w2", captioner=str(tmp_path / "no-blip2")).fit(real)
    with pytest.raises(FileNotFoundError, match="no-such-sd"):
        _generator(tmp_path / "no-such-sd", tmp_path / "w3", mode="pretrained").fit(real)
    with pytest.raises(FileNotFoundError, match="generator.params.checkpoint"):
        _generator(tiny_sd_dir, tmp_path / "w4", checkpoint=str(tmp_path / "no-model")).fit(real)
    with pytest.raises(ValueError, match="mode 'finetuned'"):
        _generator(tiny_sd_dir, tmp_path / "w5", mode="pretrained", checkpoint="x")
    with pytest.raises(ValueError, match="coarse_steps"):
        _generator(tiny_sd_dir, tmp_path / "w6", coarse_steps=-1)


# ------------------------------------------------------------------------------------------ issue 12
def _with_captions(real, captions):
    return LabeledImages(real.schema, labels=real.labels, ids=list(real.ids), pixels=real.pixels,
                         captions=captions)


def test_label_captions_make_mixing_a_no_op_and_warn_while_data_captions_mix(tiny_sd_dir, real, tmp_path,
                                                                            caplog):
    items = [PlanItem(f"cat-{k}", (0,), seed=k) for k in range(6)]
    plain = _generator(tiny_sd_dir, tmp_path / "labels", mode="pretrained", coarse_steps=3, fine_steps=20)
    with caplog.at_level("WARNING", logger="synthaug.generators.mvc"):
        plain.fit(real)
    assert "does nothing" in caplog.text and "caption_source: data" in caplog.text
    cat = plain._load_data()[2]["class/0"]
    assert torch.equal(cat[0], cat[1]) and torch.equal(cat[0], cat[2])  # one caption for the whole class
    assert all(torch.equal(plain.condition(it)[0], cat[0]) for it in items)  # the "mix" is a copy

    captions = ["a striped cat", "a cat on grass", "a sleeping cat", "a dog with a ball", "a small dog"]
    caplog.clear()
    mixing = _generator(tiny_sd_dir, tmp_path / "data", mode="pretrained", coarse_steps=3, fine_steps=20)
    with caplog.at_level("WARNING", logger="synthaug.generators.mvc"):
        mixing.fit(_with_captions(real, captions))  # caption_source "auto" picks the data's captions
    assert "does nothing" not in caplog.text
    stored = json.loads((tmp_path / "data" / "captions.json").read_text())
    assert stored["real-1"] == "This is an image of cat, a cat on grass"
    cat = mixing._load_data()[2]["class/0"]
    mixed = [mixing.condition(it)[0] for it in items]
    assert any(not any(torch.equal(m, e) for e in cat) for m in mixed), "no mixed embedding differs from a caption's"
    assert all((m[None] == cat).any(0).all() for m in mixed)  # every value still from the class's captions


def test_caption_source_settings_are_checked(tiny_sd_dir, real, tmp_path):
    with pytest.raises(ValueError, match="caption_source='data' needs per-image captions"):
        _generator(tiny_sd_dir, tmp_path / "a", mode="pretrained", caption_source="data").fit(real)
    with pytest.raises(ValueError, match="needs generator.params.captioner"):
        _generator(tiny_sd_dir, tmp_path / "b", caption_source="blip2")
    with pytest.raises(ValueError, match="used only with caption_source 'blip2'"):
        _generator(tiny_sd_dir, tmp_path / "c", caption_source="labels", captioner="x")


def test_a_checkpoint_for_other_classes_is_refused(tiny_sd_dir, blip2_dir, real, finetuned, tmp_path):
    from synthaug.errors import SettingError

    other = LabelSchema.single(["cat", "dog", "fish"])
    params = _params(tiny_sd_dir, mode="finetuned", checkpoint=str(finetuned / "model"))
    gen = create_generator("mvc", params, other, workdir=tmp_path / "w", seed=0, progress=False)
    other_real = LabeledImages(other, labels=real.labels, ids=list(real.ids), pixels=real.pixels)
    with pytest.raises(SettingError, match=r"label schema .*bird.*data has schema .*fish") as err:
        gen.fit(other_real)
    assert str(finetuned / "model") in str(err.value) and "bird" in str(err.value)
    same = create_generator("mvc", params, SCHEMA, workdir=tmp_path / "w2", seed=0, progress=False)
    same.fit(real)
    same.check_loadable()


def test_progress_false_silences_captioning_and_training_bars(tiny_sd_dir, blip2_dir, real, tmp_path, capsys):
    params = _params(tiny_sd_dir, mode="finetuned", captioner=str(blip2_dir), train_steps=1, batch_size=1)
    for progress in (True, False):
        gen = create_generator("mvc", params, SCHEMA, workdir=tmp_path / str(progress), seed=0, progress=progress)
        gen.fit(real)
        err = capsys.readouterr().err
        assert ("caption (BLIP-2)" in err, "train mvc" in err) == (progress, progress)
    assert gen.config.train_precision == "auto" and gen.train_precision in ("fp32", "bf16")
