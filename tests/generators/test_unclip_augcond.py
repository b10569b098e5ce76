"""unclip-augcond end to end on a tiny random-weight Stable unCLIP pipeline (offline, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.generators.augcond import METHODS
from synthaug.plan import PlanItem, make_items
from synthaug.store import SyntheticStore
from tiny_unclip import TINY_UNCLIP_IMAGE_SIZE, build_tiny_unclip_pipeline

SCHEMA = LabelSchema.single(["cat", "dog", "bird"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones (the CI box has 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    return build_tiny_unclip_pipeline(tmp_path_factory.mktemp("tiny-unclip") / "pipeline")


@pytest.fixture(scope="module")
def real() -> LabeledImages:
    """Three cats and two dogs (no bird), 40 × 36 pixels, so the CLIP processor resizes and crops."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((5, 36, 40, 3)) * 255).astype(np.uint8)
    return LabeledImages(SCHEMA, labels=[[0], [0], [0], [1], [1]], ids=[f"real-{i}" for i in range(5)],
                         pixels=pixels)


def _generator(unclip_dir, workdir, **params):
    params = {"model": str(unclip_dir), "num_inference_steps": 2, **params}
    return create_generator("unclip-augcond", params, SCHEMA, workdir=workdir, seed=0)


def _items():
    return make_items(SCHEMA, [2, 1, 0], seed=3)


def _pixels(store):
    return {r["item_id"]: np.asarray(store.load().image(i)) for i, r in enumerate(store.records())}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fills_a_store_deterministically(method, unclip_dir, real, tmp_path):
    gen = _generator(unclip_dir, tmp_path / "work", method=method)
    assert not gen.is_fitted()
    gen.fit(real)
    assert gen.is_fitted()
    items = _items()
    batched = SyntheticStore(tmp_path / "batched", SCHEMA)
    assert fill_store(gen, items, batched, batch_size=3, progress=False) == 3
    single = SyntheticStore(tmp_path / "single", SCHEMA)
    fill_store(gen, items, single, batch_size=1, progress=False)

    lines = [json.loads(line) for line in batched.metadata_path.read_text().splitlines()]
    assert [rec["item_id"] for rec in lines] == [it.item_id for it in items]
    num_sources = 1 if method in ("random-image", "dropout") else 2
    for rec in lines:
        assert rec["method"] == "unclip-augcond" and rec["augmentation"] == method
        assert rec["model"] == str(unclip_dir) and rec["guidance_scale"] == 2.0
        assert rec["text"] == rec["labels"]["label"]  # the class-name prompt
        assert len(rec["source_ids"]) == num_sources
        class_ids = {"cat": {"real-0", "real-1", "real-2"}, "dog": {"real-3", "real-4"}}[rec["label"]]
        assert set(rec["source_ids"]) <= class_ids  # only images of the item's own class
        assert ("mix_lambda" in rec) == (num_sources == 2)
    for rec in batched.records():
        image = batched.load(ids=[rec["item_id"]]).image(0)
        assert image.size == (TINY_UNCLIP_IMAGE_SIZE, TINY_UNCLIP_IMAGE_SIZE) and image.mode == "RGB"
    # every random choice is the item's own: same sources, λ and noise whatever the batch ...
    assert batched.records() == single.records()
    # ... so the images are equal up to float rounding (~1e-6 before quantising; batched kernels may sum in
    # another order), the tolerance sd-text2img's test uses too
    a, b = _pixels(batched), _pixels(single)
    for k in a:
        diff = np.abs(a[k].astype(int) - b[k].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"{k}: the image depends on its batch"
    assert not np.array_equal(a["cat-00000"], a["cat-00001"])


def test_restart_reloads_real_images_from_workdir(unclip_dir, real, tmp_path):
    first = _generator(unclip_dir, tmp_path / "work", method="cutmix-dropout")
    first.fit(real)
    item = _items()[:1]
    before = first.generate(item)[0]
    again = _generator(unclip_dir, tmp_path / "work", method="cutmix-dropout")  # a new process, no fit
    assert again.is_fitted()
    assert np.array_equal(np.asarray(again.generate(item)[0]), np.asarray(before))


def test_embed_mixup_condition_is_the_mix_of_the_two_encoded_images(unclip_dir, real, tmp_path):
    gen = _generator(unclip_dir, tmp_path / "work", method="embed-mixup")
    gen.fit(real)
    embedding, info = gen.condition(_items()[0])
    index = {id_: i for i, id_ in enumerate(real.ids)}
    first, second = gen._encode([real.image(index[i]) for i in info["source_ids"]])
    lam = info["mix_lambda"]
    assert torch.allclose(embedding, lam * first + (1 - lam) * second, atol=1e-6)
    with_dropout = _generator(unclip_dir, tmp_path / "work", method="embed-mixup-dropout")
    dropped, _ = with_dropout.condition(_items()[0])
    zero = dropped == 0
    assert zero.any() and torch.allclose(dropped[~zero], embedding[~zero] / 0.6, atol=1e-5)


def test_plan_source_ids_are_used(unclip_dir, real, tmp_path):
    gen = _generator(unclip_dir, tmp_path / "work", method="mixup")
    gen.fit(real)
    item = PlanItem("cat-x", (0,), seed=1, source_ids=("real-2",))
    _, info = gen.condition(item)
    assert info["source_ids"][0] == "real-2" and info["source_ids"][1] in {"real-0", "real-1", "real-2"}
    with pytest.raises(ValueError, match="real-9"):
        gen.condition(PlanItem("cat-y", (0,), seed=1, source_ids=("real-9",)))


def test_clear_errors(unclip_dir, real, tmp_path):
    gen = _generator(unclip_dir, tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="run fit"):
        gen.generate(_items()[:1])
    gen.fit(real)
    with pytest.raises(ValueError, match="no real image"):
        gen.generate([PlanItem("bird-0", (2,), seed=0)])
    with pytest.raises(ValueError, match="method"):
        _generator(unclip_dir, tmp_path / "w2", method="cutout")
    missing = _generator(tmp_path / "no-such-model", tmp_path / "w3")
    missing.fit(real)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        missing.generate(_items()[:1])


def test_real_image_embeddings_are_encoded_once_and_reused(unclip_dir, real, tmp_path):
    """The real images' CLIP embeddings are computed once (at check_loadable, after fit) and read from their
    cache; only pixel-space mixes are encoded while sampling, one batch per call."""
    gen = _generator(unclip_dir, tmp_path / "work", method="embed-mixup")
    gen.fit(real)
    gen.check_loadable()
    cache = tmp_path / "work" / "real" / "clip_image_embeds.safetensors"
    made = cache.stat().st_mtime_ns
    encode, calls = gen._encode, []
    assert torch.allclose(gen._real_embedding(3), encode([real.image(3)])[0], atol=1e-5)

    for method, encoded in (("embed-mixup", []), ("random-image", []), ("mixup", [3])):
        other = _generator(unclip_dir, tmp_path / "work", method=method)
        calls.clear()
        inner = other._encode
        other._encode = lambda images, inner=inner: calls.append(len(images)) or inner(images)
        other.sample(_items())
        assert calls == encoded, method
    assert cache.stat().st_mtime_ns == made, "the cache was reused, not rebuilt"
