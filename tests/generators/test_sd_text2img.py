"""sd-text2img end to end on a tiny random-weight Stable Diffusion pipeline (built in conftest, offline)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthaug.data.schema import LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.generators.sd_common import item_generators, load_pipeline, resolve_checkpoint
from synthaug.plan import PlanItem, make_items
from synthaug.store import SyntheticStore, image_path
from tiny_sd import tiny_clip_tokenizer

SCHEMA = LabelSchema.single(["cat", "dog", "golden_retriever"])
FASHION = LabelSchema.from_dict({"pattern": ["floral", "lattice"], "sleeve": ["long_sleeve", "sleeveless"],
                                 "fabric": ["cotton", "denim"]})
FAST = {"num_inference_steps": 2}


def _pixels(path):
    return np.asarray(Image.open(path))


def test_tiny_tokenizer_has_whole_words_and_takes_any_text(tmp_path):
    tokenizer = tiny_clip_tokenizer(tmp_path)
    assert tokenizer.tokenize("A person wearing lattice clothes 42") == [
        "a</w>", "person</w>", "wearing</w>", "lattice</w>", "clothes</w>", "4</w>", "2</w>"]
    ids = tokenizer("zebra_crossing é 日本!", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id and max(ids) < len(tokenizer)


def test_fill_store_writes_images_and_manifest(tiny_sd_dir, tmp_path):
    items = make_items(SCHEMA, [1, 0, 2], seed=7)
    gen = create_generator("sd-text2img", {"model": str(tiny_sd_dir), **FAST}, SCHEMA)
    store = SyntheticStore(tmp_path / "set", SCHEMA)
    assert fill_store(gen, items, store, batch_size=2, progress=False) == 3

    lines = [json.loads(line) for line in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    assert [rec["item_id"] for rec in lines] == [it.item_id for it in items]
    by_id = {rec["item_id"]: rec for rec in lines}
    rec = by_id["golden_retriever-00001"]
    assert rec["text"] == "a photo of a golden retriever"
    assert rec["labels"] == {"label": "golden_retriever"} and rec["label_ids"] == [2]
    assert rec["method"] == "sd-text2img" and rec["model"] == str(tiny_sd_dir)
    assert rec["seed"] == items[2].seed
    assert rec["guidance_scale"] == 7.5 and rec["num_inference_steps"] == 2
    for rec in lines:
        im = Image.open(tmp_path / "set" / rec["file_name"])
        assert im.size == (16, 16) and im.mode == "RGB"
    assert fill_store(gen, items, store, batch_size=2, progress=False) == 0  # complete: nothing left to do


@pytest.mark.parametrize("scheduler", ["default", "euler-ancestral"])  # ancestral: fresh noise every step
def test_same_item_same_image_whatever_the_batch(tiny_sd_dir, tmp_path, scheduler):
    items = make_items(SCHEMA, [1, 1, 1], seed=3)
    gen = create_generator("sd-text2img", {"model": str(tiny_sd_dir), "scheduler": scheduler, **FAST}, SCHEMA)
    one, three = SyntheticStore(tmp_path / "b1", SCHEMA), SyntheticStore(tmp_path / "b3", SCHEMA)
    fill_store(gen, items, one, batch_size=1, progress=False)
    fill_store(gen, items, three, batch_size=3, progress=False)
    images = [_pixels(tmp_path / "b1" / image_path(it.item_id)) for it in items]
    for it, a in zip(items, images):
        b = _pixels(tmp_path / "b3" / image_path(it.item_id))
        # equal up to float rounding (~1e-6 before quantising): batched kernels may sum in another order
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert not np.array_equal(images[0], images[1])  # different items (seeds, prompts) differ


def test_attribute_captions_resolution_and_knobs(tiny_sd_dir):
    cfg = {"model": str(tiny_sd_dir), "height": 24, "width": 32, "scheduler": "dpmsolver++",
           "guidance_scale": 3.0, "negative_prompt": "blurry", "channels_last": True, **FAST}
    gen = create_generator("sd-text2img", cfg, FASHION)
    items = [PlanItem("x", (1, 1, 0), 5), PlanItem("y", (0, 0, 1), 6, prompt="a photo of a dress")]
    assert gen.prompts(items) == ["A person wearing lattice sleeveless cotton clothes", "a photo of a dress"]
    made = gen.sample(items)
    assert [g.meta["text"] for g in made] == gen.prompts(items)
    assert [g.image.size for g in made] == [(32, 24), (32, 24)]
    assert type(gen.pipeline().scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert gen.provenance()["scheduler"] == "dpmsolver++"


def test_item_generators_are_seeded_per_item():
    items = [PlanItem("a", (0,), 11), PlanItem("b", (0,), 12)]
    first = [torch.randn(3, generator=g) for g in item_generators(items)]
    again = torch.randn(3, generator=item_generators(items[1:])[0])
    assert torch.equal(first[1], again) and not torch.equal(first[0], first[1])


def test_missing_checkpoints_fail_fast_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*save_pretrained"):
        resolve_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="from_single_file"):
        resolve_checkpoint("weights/sd-v1-1.ckpt")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):  # an uncached hub id, offline: no network
        load_pipeline("synthaug-tests/not-a-model", device=torch.device("cpu"), local_files_only=True)
    gen = create_generator("sd-text2img", {"model": str(tmp_path / "nope")}, SCHEMA)
    with pytest.raises(FileNotFoundError, match="generator.params.model"):
        gen.generate([PlanItem("a", (0,), 1)])


def test_config_errors_name_the_field(tiny_sd_dir):
    with pytest.raises(ValueError, match="generator.params.steps"):
        create_generator("sd-text2img", {"model": "m", "steps": 3}, SCHEMA)
    with pytest.raises(ValueError, match="generator.params.scheduler"):
        create_generator("sd-text2img", {"model": "m", "scheduler": "heun"}, SCHEMA)
    with pytest.raises(ValueError, match=r"\{class\}"):
        create_generator("sd-text2img", {"model": "m", "prompt_template": "a {class}"}, FASHION)
    gen = create_generator("sd-text2img", {"model": str(tiny_sd_dir), "dtype": "fp16"}, SCHEMA)
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        gen.generate([PlanItem("a", (0,), 1)])
