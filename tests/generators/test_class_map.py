"""class-map: a pretrained class-conditional model reached through ``class_map`` (study 003 §3.3.1), on tiny
random-weight models built here, offline.

The tiny DiT (``DiTPipeline``: a 1-layer DiT transformer over the 2-level VAE of ``tiny_sd``, 1,000 classes
and the null class, a few ImageNet names in its ``model_index.json`` ``id2label`` as on the hub) makes
16 × 16 RGB images; the tiny class-conditional UNet (``DDPMPipeline``: a ``UNet2DModel`` with 10 class
embeddings) makes 8 × 8 RGB ones. Both are built after ``torch.manual_seed(0)``, so the fixtures are the same on every run. Other test modules
import :func:`build_tiny_dit_pipeline` and :func:`build_tiny_class_unet_pipeline` from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import (
    DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DiTTransformer2DModel, UNet2DModel,
)
from tiny_sd import tiny_vae

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import MissingFileError, SettingError
from synthaug.generators import create_generator, fill_store
from synthaug.plan import make_items, unconditional_items
from synthaug.store import SyntheticStore

# a few ImageNet classes at their ImageNet ids, written as the hub's DiT model_index.json writes them
IMAGENET_NAMES = {281: "tabby, tabby cat", 285: "Egyptian cat", 207: "golden retriever",
                  555: "fire engine, fire truck", 569: "garbage truck, dustcart",
                  510: "container ship, containership, container vessel"}
SCHEMA = LabelSchema.single(["cat", "dog", "bird"])
CLASS_MAP = {"cat": ["tabby cat", 285], "dog": ["golden retriever"]}


def _add_id2label(folder: Path, id2label: dict[int, str]) -> None:
    """Writes ``id2label`` into the pipeline's ``model_index.json`` (``save_pretrained`` leaves it out)."""
    index = folder / "model_index.json"
    config = json.loads(index.read_text())
    config["id2label"] = {str(k): v for k, v in id2label.items()}
    index.write_text(json.dumps(config, indent=2))


def build_tiny_dit_pipeline(path: str | Path) -> Path:
    """Saves a tiny random-weight ``DiTPipeline`` (16 × 16 RGB, 1,000 class ids, DDIM) to ``path``."""
    path = Path(path)
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1, num_attention_heads=2,
        attention_head_dim=8, num_embeds_ada_norm=1000, attention_bias=True, activation_fn="gelu-approximate",
        norm_type="ada_norm_zero", norm_elementwise_affine=False)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=scheduler).save_pretrained(
        path, safe_serialization=True)
    _add_id2label(path, IMAGENET_NAMES)
    return path


def build_tiny_class_unet_pipeline(path: str | Path, *, id2label: dict[int, str] | None = None) -> Path:
    """Saves a tiny random-weight ``DDPMPipeline`` (8 × 8 RGB) whose ``UNet2DModel`` has 10 classes."""
    path = Path(path)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=10)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(path, safe_serialization=True)
    if id2label:
        _add_id2label(path, id2label)
    return path


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory) -> Path:
    return build_tiny_dit_pipeline(tmp_path_factory.mktemp("tiny-dit") / "pipeline")


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory) -> Path:
    return build_tiny_class_unet_pipeline(tmp_path_factory.mktemp("tiny-class-unet") / "pipeline",
                                          id2label={i: f"digit {i}" for i in range(10)})


def _generator(model: Path, tmp_path: Path, **params):
    return create_generator("class-map", {"model": str(model), "sampling_steps": 2, **params}, SCHEMA,
                            workdir=tmp_path / "work", progress=False)


def _records(store: SyntheticStore) -> list[dict]:
    return [json.loads(line) for line in store.metadata_path.read_text().splitlines()]


def test_each_item_draws_a_mapped_model_class_from_its_own_seed(dit_dir, tmp_path):
    """Names resolve through id2label; an item's model class is one of its class's, the same alone or in any
    batch order, and the draw uses every entry; an unlabelled item draws among all of class_map's."""
    gen = _generator(dit_dir, tmp_path, class_map=CLASS_MAP)
    items = make_items(SCHEMA, [40, 3, 0], seed=1)
    drawn = gen.model_classes(items)
    assert set(drawn[:40]) == {281, 285} and set(drawn[40:]) == {207}
    assert gen.model_classes(items[::-1]) == drawn[::-1]
    assert [gen.model_classes([it])[0] for it in items[:5]] == drawn[:5]
    unlabelled = gen.model_classes(unconditional_items(30, seed=2))
    assert set(unlabelled) == {281, 285, 207}

    store = SyntheticStore(tmp_path / "set", SCHEMA)
    fill_store(gen, items[38:41], store, batch_size=2, progress=False)
    for rec, model_class in zip(_records(store), drawn[38:41]):
        assert rec["model"] == str(dit_dir) and rec["model_class_id"] == model_class
        assert rec["model_class"] == IMAGENET_NAMES[model_class] and rec["pipeline"] == "DiTPipeline"
        assert rec["class_map"] == CLASS_MAP and rec["guidance_scale"] == 4.0  # DiTPipeline's default


def test_same_item_same_image_in_any_batch_with_a_stochastic_sampler(dit_dir, tmp_path):
    """Guided DiT sampling with DDPM's ancestral sampler: each item's noise, at every step, is its own."""
    gen = _generator(dit_dir, tmp_path, class_map=CLASS_MAP, scheduler="ddpm", guidance_scale=3.0)
    items = make_items(SCHEMA, [2, 1, 0], seed=4)
    batch = [np.asarray(g.image, dtype=int) for g in gen.sample(items)]
    alone = [np.asarray(gen.sample([it])[0].image, dtype=int) for it in reversed(items)][::-1]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(batch, alone))
    assert not np.array_equal(batch[0], batch[1])


def test_images_take_the_real_images_size_and_mode(unet_dir, tmp_path):
    """A class-conditional UNet2DModel (8 × 8 RGB) for 10 × 12 greyscale data: images and manifest follow the
    data; names come from the UNet pipeline's id2label; guidance defaults to plain conditional."""
    gen = _generator(unet_dir, tmp_path, class_map={"cat": ["digit 3"], "dog": [7], "bird": [1]})
    real = LabeledImages(SCHEMA, labels=[[0], [1]], ids=["a", "b"], pixels=np.zeros((2, 12, 10), np.uint8),
                         mode="L")
    gen.use_real(real)
    store = SyntheticStore(tmp_path / "set", SCHEMA)
    fill_store(gen, make_items(SCHEMA, [1, 1, 1], seed=0), store, batch_size=3, progress=False)
    images = store.load(mode="RGB")
    assert [images.image(i).size for i in range(3)] == [(10, 12)] * 3
    recs = _records(store)
    assert [r["model_class_id"] for r in recs] == [3, 7, 1] and recs[0]["model_class"] == "digit 3"
    assert recs[0]["image_size"] == [12, 10] and recs[0]["image_mode"] == "L"
    assert recs[0]["guidance_scale"] == 1.0
    with Image.open(store.root / recs[0]["file_name"]) as im:
        assert im.mode == "L"


@pytest.mark.parametrize("class_map, match", [
    ({"cats": [281]}, r"key 'cats', which is not a class of the data; did you mean 'cat'\?.*'bird'"),
    ({"cat": []}, r"class_map\['cat'\] is empty"),
])
def test_class_map_keys_are_checked_without_the_model(class_map, match, tmp_path):
    with pytest.raises(SettingError, match=match):
        _generator(tmp_path / "not-loaded", tmp_path, class_map=class_map)


@pytest.mark.parametrize("entry, match", [
    ("tabby kat", r"'tabby kat', which is not a class name .*did you mean 'tabby cat' \(id 281\)\?"),
    (1000, r"has 1000, but generator.params.model=.* has class ids 0..999"),
])
def test_a_bad_model_class_names_the_value_and_the_choices(dit_dir, tmp_path, entry, match):
    gen = _generator(dit_dir, tmp_path, class_map={"cat": [entry]})
    with pytest.raises(SettingError, match=match):
        gen.check_loadable()


def test_a_class_the_plan_asks_for_but_class_map_leaves_out_is_named(dit_dir, tmp_path):
    gen = _generator(dit_dir, tmp_path, class_map=CLASS_MAP)
    gen.check_loadable()
    with pytest.raises(SettingError, match=r"asks for class\(es\) \['bird'\].*add model class ids or names"):
        gen.sample(make_items(SCHEMA, [1, 0, 1], seed=0))


def test_names_need_an_id2label(tmp_path):
    bare = build_tiny_class_unet_pipeline(tmp_path / "bare")
    with pytest.raises(SettingError, match=r"'digit 3', a class name, but .* has no class names .* ids 0..9"):
        _generator(bare, tmp_path, class_map={"cat": ["digit 3"]}).check_loadable()


def test_a_model_that_cannot_take_a_class_is_refused(tiny_sd_dir, unet_dir, tmp_path):
    with pytest.raises(SettingError, match="StableDiffusionPipeline, which class-map cannot condition"):
        _generator(tiny_sd_dir, tmp_path, class_map=CLASS_MAP).check_loadable()
    with pytest.raises(SettingError, match=r"guidance_scale=3.0 needs a null class"):
        _generator(unet_dir, tmp_path, class_map=CLASS_MAP, guidance_scale=3.0).check_loadable()


def test_a_missing_model_names_the_path_or_id_and_the_fix(tmp_path):
    missing = tmp_path / "no-such-dit"
    with pytest.raises(MissingFileError, match=r"no-such-dit.*save_pretrained.*transformer/, vae/"):
        _generator(missing, tmp_path, class_map=CLASS_MAP).check_loadable()
    gen = create_generator("class-map", {"model": "nobody/no-such-dit", "local_files_only": True,
                                         "class_map": CLASS_MAP}, SCHEMA, workdir=tmp_path, progress=False)
    hub_message = r"'nobody/no-such-dit'.*taken as a hub id.*local Hugging Face cache.*save_pretrained"
    with pytest.raises(MissingFileError, match=hub_message):
        gen.check_loadable()


def test_an_empty_class_map_is_refused_before_generation(dit_dir, tmp_path):
    with pytest.raises(SettingError, match=r"class_map is empty.*'cat', 'dog', 'bird'"):
        _generator(dit_dir, tmp_path).check_loadable()


def test_nothing_is_trained(dit_dir, tmp_path):
    """No fit: the runner's generator stage only checks that the model loads; nothing is written."""
    gen = _generator(dit_dir, tmp_path, class_map=CLASS_MAP)
    assert gen.is_fitted() and gen.config.training_part() == {"model": str(dit_dir)}
    gen.check_loadable()
    assert not (tmp_path / "work").exists()
    assert gen.sample([]) == []
