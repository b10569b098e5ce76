import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from noise_generator import NoiseGenerator  # noqa: E402,F401  (registers "test-noise")

from synthaug.data import LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.plan import make_items
from synthaug.store import StoreError, SyntheticStore, image_path, open_store

SCHEMA = LabelSchema.single(["zero", "one", "two"], name="digit")


def _items(seed=0):
    return make_items(SCHEMA, [0, 6, 9], seed=seed)


def _check_complete(store: SyntheticStore, items):
    recs = store.records()
    assert sorted(r["item_id"] for r in recs) == sorted(it.item_id for it in items)
    lines = store.metadata_path.read_text().splitlines()
    assert len(lines) == len(items), "no duplicate or torn manifest lines"
    gen = create_generator("test-noise", {}, SCHEMA)
    by_id = {it.item_id: it for it in items}
    for r in recs:
        on_disk = np.asarray(Image.open(store.root / r["file_name"]))
        assert (on_disk == np.asarray(gen.generate([by_id[r["item_id"]]])[0])).all()
    assert not list((store.root / "images").glob("**/.tmp-*"))


def test_manifest_fields_and_loading(tmp_path):
    store = SyntheticStore(tmp_path / "s", SCHEMA)
    gen = create_generator("test-noise", {}, SCHEMA)
    assert fill_store(gen, _items(), store, batch_size=4, progress=False) == 15
    rec = json.loads(store.metadata_path.read_text().splitlines()[0])
    assert rec["file_name"] == image_path("one-00000") and rec["file_name"].count("/") == 2  # a bucket folder
    assert rec["labels"] == {"digit": "one"} and rec["label_ids"] == [1] and rec["method"] == "test-noise"
    assert isinstance(rec["seed"], int)
    loaded = open_store(tmp_path / "s").load(mode="L")
    assert len(loaded) == 15 and loaded.class_counts().tolist() == [0, 6, 9]
    assert fill_store(gen, _items(), store, progress=False) == 0  # nothing left to do


def test_same_item_same_image_whatever_the_batch_size(tmp_path):
    gen = create_generator("test-noise", {}, SCHEMA)
    a, b = SyntheticStore(tmp_path / "a", SCHEMA), SyntheticStore(tmp_path / "b", SCHEMA)
    fill_store(gen, _items(), a, batch_size=1, progress=False)
    fill_store(gen, _items(), b, batch_size=7, progress=False)
    for r in a.records():
        assert (tmp_path / "a" / r["file_name"]).read_bytes() == (tmp_path / "b" / r["file_name"]).read_bytes()


def test_recovers_from_torn_line_missing_image_and_temp_files(tmp_path):
    store = SyntheticStore(tmp_path / "s", SCHEMA)
    gen = create_generator("test-noise", {}, SCHEMA)
    items = _items()
    fill_store(gen, items[:8], store, progress=False)
    with open(store.metadata_path, "a") as f:  # a crash mid-append
        f.write('{"file_name": "images/two-00003.png", "item_')
    (store.root / image_path("one-00002")).unlink()  # listed but missing
    stray = store.root / image_path("two-00004")
    stray.parent.mkdir(exist_ok=True)
    stray.with_name(".tmp-two-00004.png").write_bytes(b"partial")
    store = SyntheticStore(tmp_path / "s", SCHEMA)
    assert len(store) == 7
    fill_store(gen, items, store, batch_size=3, progress=False)
    _check_complete(SyntheticStore(tmp_path / "s", SCHEMA), items)


def test_changed_plan_for_existing_items_is_refused(tmp_path):
    store = SyntheticStore(tmp_path / "s", SCHEMA)
    gen = create_generator("test-noise", {}, SCHEMA)
    fill_store(gen, _items(seed=0), store, progress=False)
    with pytest.raises(StoreError, match="another plan"):
        fill_store(gen, _items(seed=1), store, progress=False)
    with pytest.raises(StoreError, match="another label schema"):
        SyntheticStore(tmp_path / "s", LabelSchema.single(["x"]))


def test_resume_after_kill_9(tmp_path):
    root = tmp_path / "s"
    script = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import noise_generator
from synthaug.data import LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.plan import make_items
from synthaug.store import SyntheticStore
schema = LabelSchema.single(["zero", "one", "two"], name="digit")
store = SyntheticStore({str(root)!r}, schema, sync_every=2)
fill_store(create_generator("test-noise", {{"delay": 0.1}}, schema), make_items(schema, [0, 6, 9], seed=0),
           store, batch_size=1, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline:
        meta = root / "metadata.jsonl"
        if meta.exists() and len(meta.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = SyntheticStore(root, SCHEMA)
    assert 4 <= len(store) < 15
    fill_store(create_generator("test-noise", {}, SCHEMA), _items(), store, batch_size=4, progress=False)
    _check_complete(SyntheticStore(root, SCHEMA), _items())


def test_loads_with_hf_imagefolder(tmp_path):
    datasets = pytest.importorskip("datasets")
    store = SyntheticStore(tmp_path / "s", SCHEMA)
    fill_store(create_generator("test-noise", {}, SCHEMA), _items(), store, progress=False)
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "s"), split="train")
    assert len(ds) == 15
    row = ds[0]
    assert row["image"].size == (8, 8)
    assert row["labels"]["digit"] in ("one", "two") and isinstance(row["seed"], int)
    assert sorted(set(ds["label"])) == ["one", "two"]  # the class, not the bucket folder's name
