"""Generation under ``accelerate launch`` (2 CPU processes, gloo) with a tiny DDPM, and the store at 1 k items.

The two-process runs sample from the model the single-process run trained (``generator.params.checkpoint``), so
every store must hold the same items with the same pixels.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthaug.cli import main
from synthaug.data import LabelSchema
from synthaug.generators import create_generator, fill_store
from synthaug.plan import make_items
from synthaug.store import STATE, StoreError, SyntheticStore, open_store

ACCELERATE = Path(sys.executable).with_name("accelerate")
PLAN = {"8": 14, "9": 13}
TINY = {
    "name": "tiny",
    "seeds": [0],
    "progress": False,
    "data": {"source": "digits", "longtail": {"imbalance_ratio": 20}},
    "generator": {"name": "ddpm", "params": {"block_out_channels": [8, 16], "layers_per_block": 1,
                                             "norm_num_groups": 2, "train_steps": 2, "batch_size": 8,
                                             "sampling_steps": 10, "precision": "fp32"}},
    "plan": {"strategy": "fixed", "counts": PLAN, "batch_size": 1, "sync_every": 2},
    "evaluation": {"enabled": False},
}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process store, and the config for two processes sampling from the same model."""
    root = tmp_path_factory.mktemp("scale")
    config = root / "single.yaml"
    config.write_text(yaml.safe_dump({**TINY, "output_dir": str(root / "single")}))
    assert main(["generate", str(config)]) == 0  # batch size 1 everywhere: the same computation per image
    model = root / "single" / "tiny" / "generator" / "model"
    params = {**TINY["generator"]["params"], "checkpoint": str(model)}
    multi = {**TINY, "generator": {"name": "ddpm", "params": params}}
    return open_store(root / "single" / "tiny" / "synthetic"), multi, root


def _launch(config: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "synthaug", "generate", str(config)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _config(setup, name: str, **plan) -> Path:
    _, multi, root = setup
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**multi, "plan": {**multi["plan"], **plan}, "output_dir": str(root / name)}))
    return path


def _assert_same_store(store: SyntheticStore, reference: SyntheticStore) -> None:
    lines = store.metadata_path.read_text().splitlines()
    ids = [json.loads(line)["item_id"] for line in lines]
    assert len(ids) == len(set(ids)) == sum(PLAN.values()), "exact count, no duplicate lines"
    assert set(ids) == reference.done_ids()
    ref = {r["item_id"]: r for r in reference.records()}
    for rec in store.records():
        assert rec["label_ids"] == ref[rec["item_id"]]["label_ids"] and rec["seed"] == ref[rec["item_id"]]["seed"]
        mine = np.asarray(Image.open(store.root / rec["file_name"]).convert("L"))
        theirs = np.asarray(Image.open(reference.root / ref[rec["item_id"]]["file_name"]).convert("L"))
        assert np.array_equal(mine, theirs), f"{rec['item_id']}: other pixels than the single-process image"
    assert not list((store.root / STATE).glob("rank-*.jsonl")), "every journal folded into the manifest"
    assert not list((store.root / "images").glob("*/.tmp-*")), "no unlisted temporary image left"


@pytest.mark.slow
def test_two_processes_make_the_single_process_store(single):
    proc = _launch(_config(single, "two"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.count("27 synthetic images") == 1, "rank 0 alone reports"
    run = Path(single[2]) / "two" / "tiny" / "synthetic"
    done = json.loads((run / "done.json").read_text())
    assert done["processes"] == 2 and done["planned"] == 27
    _assert_same_store(open_store(run), single[0])


@pytest.mark.slow
def test_a_killed_rank_is_finished_by_the_rerun(single):
    psutil = pytest.importorskip("psutil")
    config = _config(single, "killed", sync_every=1)
    run = Path(single[2]) / "killed" / "tiny" / "synthetic"
    journal = run / STATE / "rank-1.jsonl"
    proc = _launch(config)
    deadline = time.time() + 240
    while time.time() < deadline and not (journal.exists() and journal.stat().st_size > 0):
        time.sleep(0.02)
    ranks = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children(recursive=True)
             if "RANK" in p.environ()}
    os.kill(ranks[1].pid, signal.SIGKILL)  # rank 1 dies mid-run; the launcher then stops rank 0
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (run / "done.json").exists()
    assert 0 < len(journal.read_text().splitlines()) < 13, "killed mid-slice"

    proc = _launch(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    _assert_same_store(open_store(run), single[0])


# ------------------------------------------------------------------------------------------ the store at 1 k
SCHEMA = LabelSchema.single([f"c{i}" for i in range(10)], name="class")


def test_a_1k_store_opens_from_its_index_and_buckets_its_images(tmp_path):
    items = make_items(SCHEMA, [100] * 10, seed=0)
    gen = create_generator("noise", {"image_size": 8, "channels": 1}, SCHEMA)
    store = SyntheticStore(tmp_path / "s", SCHEMA, sync_every=128)
    assert fill_store(gen, items, store, batch_size=64, progress=False) == 1000
    folders = [p for p in (tmp_path / "s" / "images").iterdir()]
    assert all(p.is_dir() for p in folders) and 200 < len(folders) <= 256
    assert max(len(list(p.iterdir())) for p in folders) < 30

    reopened = open_store(tmp_path / "s")
    reopened._scan = None  # the index describes the manifest: opening must not parse it
    assert len(reopened) == 1000 and reopened.load(ids=[items[5].item_id]).ids == [items[5].item_id]

    with open(tmp_path / "s" / "metadata.jsonl", "a") as f:  # a torn append: the index is stale
        f.write('{"file_name": "images/')
    assert len(open_store(tmp_path / "s")) == 1000
    assert not (tmp_path / "s" / "metadata.jsonl").read_text().endswith('"images/'), "torn line dropped"


def test_a_full_disk_lists_no_broken_image_and_says_so(tmp_path, monkeypatch):
    items = make_items(SCHEMA, [30] + [0] * 9, seed=0)
    gen = create_generator("noise", {"image_size": 8, "channels": 1}, SCHEMA)
    store = SyntheticStore(tmp_path / "s", SCHEMA, sync_every=4)
    fill_store(gen, items[:10], store, batch_size=4, progress=False)

    real_save = Image.Image.save
    writes = {"n": 0}

    def save(self, fp, *args, **kwargs):
        writes["n"] += 1
        if writes["n"] > 5:
            fp.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    store = SyntheticStore(tmp_path / "s", SCHEMA, sync_every=4)
    with pytest.raises(StoreError, match="No space left on device.*Free some space, then rerun"):
        fill_store(gen, items, store, batch_size=4, progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)

    reopened = open_store(tmp_path / "s", verify=True)
    assert len(reopened) == 14  # 10 before, then one full batch of 4 listed before the disk filled
    for rec in reopened.records():
        Image.open(reopened.root / rec["file_name"]).load()  # every listed image decodes
    assert not list((tmp_path / "s" / "images").glob("*/.tmp-*"))
    fill_store(gen, items, reopened, batch_size=4, progress=False)
    assert len(open_store(tmp_path / "s")) == 30
