"""The contract every registered generator keeps (STYLE.md §12), on tiny random-weight models, offline:

- count and size: one image per plan item, of the model's size;
- manifest: each line names the item, its labels, seed and method, and every sampling setting;
- determinism and resume: a run interrupted after one item and resumed with another batch size (a new
  generator object, as after a restart) ends with the same manifest and images as one uninterrupted run;
- re-sampling: a line alone (its item and sampling settings) plus the generator's model re-makes its image;
- the runner hooks: ``check_loadable`` passes after ``fit``; unlabelled (class-agnostic) items work when the
  generator declares a ``pseudo_control`` and are refused with a clear error when it declares None.

``pseudo-label`` runs over a tiny ddpm base and a random tiny classifier (and, for its sd-text2img control,
over the tiny Stable Diffusion pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_class_map import build_tiny_dit_pipeline
from tiny_unclip import build_tiny_unclip_pipeline

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import MissingFileError, SettingError
from synthaug.generators import GENERATORS, create_generator, fill_store, load_all
from synthaug.plan import make_items, unconditional_items
from synthaug.store import SyntheticStore

load_all()
SCHEMA = LabelSchema.single(["cat", "dog"])
CAPTIONS = ["a striped cat", "a cat on grass", "a sleeping cat", "a dog with a ball", "a dog in snow",
            "a small dog"]
TINY_DDPM = {"block_out_channels": [16, 32], "layers_per_block": 1, "batch_size": 4, "train_steps": 1,
             "sampling_steps": 2, "guidance_scale": 3.0, "sampler": "ddpm", "precision": "fp32"}
MANIFEST_FIELDS = {"file_name", "item_id", "label", "labels", "label_ids", "seed", "text", "source_ids", "method"}


@pytest.fixture(scope="module")
def real() -> LabeledImages:
    """Three cats and three dogs, 16 × 16 RGB, each with its own caption."""
    pixels = (np.random.default_rng(0).random((6, 16, 16, 3)) * 255).astype(np.uint8)
    return LabeledImages(SCHEMA, labels=[[0], [0], [0], [1], [1], [1]], ids=[f"real-{i}" for i in range(6)],
                         pixels=pixels, captions=list(CAPTIONS))


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory) -> Path:
    return build_tiny_unclip_pipeline(tmp_path_factory.mktemp("tiny-unclip") / "pipeline")


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory) -> Path:
    return build_tiny_dit_pipeline(tmp_path_factory.mktemp("tiny-dit") / "pipeline")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """A random-weight small-cnn classifier saved as `synthaug train` saves one."""
    from synthaug.train.config import ModelConfig
    from synthaug.train.models import create_classifier, save_classifier

    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = ModelConfig()
    save_classifier(create_classifier(config, SCHEMA, 3), config, SCHEMA, 3, 16, folder)
    return folder


@pytest.fixture(scope="module")
def setups(tiny_sd_dir, unclip_dir, classifier_dir,
           dit_dir) -> dict[str, tuple[dict, int]]:
    """Generator name -> (params with non-default sampling settings, image side)."""
    sd = {"model": str(tiny_sd_dir), "num_inference_steps": 2, "guidance_scale": 3.0, "negative_prompt": "blurry"}
    return {
        "ddpm": (TINY_DDPM, 16),
        "sd-text2img": (sd, 16),
        "sd-finetune": ({**sd, "train_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1}, 16),
        "mvc": ({"model": str(tiny_sd_dir), "mode": "pretrained", "caption_source": "data", "resolution": 16,
                 "num_inference_steps": 2, "guidance_scale": 3.0, "coarse_steps": 2, "fine_steps": 3}, 16),
        "unclip-augcond": ({"model": str(unclip_dir), "num_inference_steps": 2, "guidance_scale": 3.0,
                            "method": "embed-mixup-dropout", "dropout_p": 0.2}, 32),
        "pseudo-label": ({"classifier": str(classifier_dir), "base": "ddpm", "base_params": TINY_DDPM}, 16),
        "pseudo-label/sd-text2img": ({"classifier": str(classifier_dir), "base": "sd-text2img",
                                      "base_params": sd}, 16),
        "noise": ({"image_size": 16, "channels": 3}, 16),
        "class-map": ({"model": str(dit_dir), "class_map": {"cat": ["tabby cat", 285], "dog": [207]},
                       "sampling_steps": 2, "guidance_scale": 3.0, "scheduler": "ddpm"}, 16),
    }


def _without_sampling(name: str, params: dict) -> dict:
    """``params`` with every sampling setting removed (what the model alone fixes)."""
    cls = GENERATORS.get(name).config_class
    out = {k: v for k, v in params.items() if k not in cls.sampling_fields}
    if "base_params" in params:
        out["base_params"] = _without_sampling(params["base"], params["base_params"])
    return out


def _pixels(store: SyntheticStore) -> dict[str, np.ndarray]:
    images = store.load(ids=None) if all(r["label_ids"] is not None for r in store.records()) else None
    assert images is not None, "every image of these plans is labelled"
    return {item_id: np.asarray(images.image(i), dtype=int) for i, item_id in enumerate(images.ids)}


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float rounding of batched kernels (a few pixel values off by one)."""
    diff = np.abs(a - b)
    return a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 0.02


def _records(store: SyntheticStore) -> list[dict]:
    return [json.loads(line) for line in store.metadata_path.read_text().splitlines()]


def _run_contract(key: str, setups, real, tmp_path) -> None:
    name = key.split("/")[0]
    params, side = setups[key]

    def build(**overrides):
        return create_generator(name, {**params, **overrides}, SCHEMA, workdir=tmp_path / "work", seed=0,
                                progress=False)

    gen = build()
    gen.fit(real)
    assert gen.is_fitted()
    gen.check_loadable()
    labelled = name != "pseudo-label"
    items = make_items(SCHEMA, [2, 1], seed=3) if labelled else unconditional_items(3, seed=3)

    # count, size, manifest
    whole = SyntheticStore(tmp_path / "whole", SCHEMA)
    assert fill_store(gen, items, whole, batch_size=3, progress=False) == 3
    lines = _records(whole)
    assert [r["item_id"] for r in lines] == [it.item_id for it in items]
    pixels = _pixels(whole)
    assert all(p.shape[:2] == (side, side) for p in pixels.values())
    for rec, item in zip(lines, items):
        assert MANIFEST_FIELDS <= set(rec), f"missing manifest fields {MANIFEST_FIELDS - set(rec)}"
        assert rec["method"] == name and rec["seed"] == item.seed
        assert rec["label_ids"] is not None and (not labelled or rec["label_ids"] == list(item.labels))
        sampler, sampling = gen, gen.sampling_params(rec)
        if name == "pseudo-label":
            sampler, sampling = gen.base, sampling["base_params"]
        assert set(sampler.config.sampling_fields) <= set(sampling), "a sampling setting is missing"

    # interrupted after one item (batch 1), resumed by a new generator object (batch 2): the same set
    parts = SyntheticStore(tmp_path / "parts", SCHEMA)
    assert fill_store(gen, items[:1], parts, batch_size=1, progress=False) == 1
    resumed = SyntheticStore(tmp_path / "parts", SCHEMA)
    assert fill_store(build(), items, resumed, batch_size=2, progress=False) == 2
    assert resumed.records() == whole.records()
    again = _pixels(resumed)
    assert all(_close(pixels[k], again[k]) for k in pixels)
    assert not np.array_equal(pixels[items[0].item_id], pixels[items[1].item_id])

    # a manifest line and the model alone re-make the image
    fresh = create_generator(name, _without_sampling(name, params), SCHEMA, workdir=tmp_path / "work", seed=0,
                             progress=False)
    for rec in lines:
        remade = create_generator(name, {**_without_sampling(name, params), **fresh.sampling_params(rec)}, SCHEMA,
                                  workdir=tmp_path / "work", seed=0, progress=False)
        out = remade.sample([remade.item_from_record(rec)])[0]
        assert _close(np.asarray(out.image, dtype=int), pixels[rec["item_id"]]), f"{rec['item_id']} not re-made"
        assert {**rec, **remade.provenance(), **out.meta} == rec

    # unlabelled items: a class-agnostic control, or a clear refusal
    if labelled and gen.pseudo_control is not None:
        made = gen.sample(unconditional_items(1, seed=5))
        assert made[0].image.size == (side, side)
    elif labelled:
        with pytest.raises(SettingError, match="no labels"):
            gen.sample(unconditional_items(1, seed=5))


# the generators synthaug ships, whatever other test modules registered before collection (test-noise,
# test-copier, test-shade): the parameters must not depend on the order test files are collected in
BUILT_IN = [n for n in GENERATORS.names() if GENERATORS.get(n).__module__.startswith("synthaug.")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_generator_contract(name, setups, real, tmp_path):
    if name not in setups:
        pytest.fail(f"generator {name!r} has no tiny setup in this contract suite; add one to `setups`.")
    _run_contract(name, setups, real, tmp_path)


def test_pseudo_labelled_sd_control_records_how_it_sampled(setups, real, tmp_path):
    """The control of sd-text2img samples from the empty prompt with the configured guidance and negative
    prompt; its lines say so, and re-make their images."""
    _run_contract("pseudo-label/sd-text2img", setups, real, tmp_path)
    rec = _records(SyntheticStore(tmp_path / "whole", SCHEMA))[0]
    assert rec["text"] == "" and rec["guidance_scale"] == 3.0 and rec["negative_prompt"] == "blurry"
    assert rec["base_method"] == "sd-text2img" and len(rec["confidence"]) == 1


@pytest.mark.parametrize("name", ["sd-text2img", "unclip-augcond", "class-map"])
def test_check_loadable_fails_on_a_wrong_model_path(name, real, tmp_path):
    """Pretrained pipelines load nothing in fit; check_loadable catches a wrong path before generation."""
    gen = create_generator(name, {"model": str(tmp_path / "no-such-pipeline")}, SCHEMA, workdir=tmp_path / "work",
                           progress=False)
    gen.fit(real)
    with pytest.raises(MissingFileError, match="no-such-pipeline"):
        gen.check_loadable()
