"""The run folder is the user's data (issue 24): names stay inside output_dir, I/O failures are one named line,
one process writes a run folder at a time, absurd plans are refused before they are built, a generator that
trains nothing leaves no `started` record when it fails to load, the documented image limits hold, a bad config
is reported before torch is imported, and a refused re-run changes no byte of the run folder."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthaug.config import ConfigError, build_config, load_config
from synthaug.errors import SettingError
from synthaug.runlock import RunFolderBusy, RunLock, holder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _images(root, counts=(12, 8, 6), names=("cat", "dog", "owl")):
    rng = np.random.default_rng(0)
    for name, n in zip(names, counts):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def _config(folder, **extra):
    """A config on a small image folder with the `noise` generator (no model, microseconds per image)."""
    config = {"name": "run", "output_dir": str(folder / "runs"), "progress": False, "device": "cpu",
              "data": {"source": "imagefolder", "root": str(_images(folder / "images")), "test_per_class": 2,
                       "val_per_class": 1},
              "generator": {"name": "noise", "params": {"image_size": 16}},
              "plan": {"strategy": "fixed", "counts": {"owl": 2}},
              "train": {"epochs": 1, "batch_size": 16}, "judge": {"enabled": False},
              "evaluation": {"enabled": False}, "arms": [{"name": "real-ce"}], **extra}
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tree_hash(folder):
    """Every file's relative path and bytes, and every folder's name, under ``folder``."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _cli(*args, timeout=120, env=ENV, **kw):
    return subprocess.run([sys.executable, "-m", "synthaug", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


# ------------------------------------------------------------------------------------------ 1. names
@pytest.mark.parametrize("name", ["../../escaped_run", "/abs/run", "", "..", ".hidden", "a/b", "a\\b", "run\n"])
def test_name_must_be_a_folder_name(name):
    with pytest.raises(ConfigError, match=r"name: name .* must be a folder name.*--set output_dir=/data/runs"):
        build_config({"name": name})


def test_name_escape_from_the_command_line_writes_nothing(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path)
    assert main(["stats", str(path), "--set", "name=../../escaped_run"]) == 2
    assert "must be a folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "images"]
    assert build_config({"name": "exp-1.v2+lt_100"}).run_dir == Path("runs") / "exp-1.v2+lt_100"


# ------------------------------------------------------------------------------------------ 2. I/O errors
def test_non_utf8_config_names_line_and_column(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: run\ndata: {source: digits}  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml line 2, column 30: byte 0xe9 is not UTF-8 text; the "
                                          r"experiment config must be UTF-8\. Re-save it as UTF-8"):
        load_config(path)


def test_empty_config_is_refused_and_braces_run_on_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty .* to run on every default, write `\{\}`"):
        load_config(path)
    path.write_text("{}\n")
    assert load_config(path).name == "experiment"
    with pytest.raises(ConfigError, match=r"is not a file"):
        load_config(tmp_path)


def test_output_dir_that_is_a_file_is_named(tmp_path, capsys):
    from synthaug.cli import main

    (tmp_path / "afile").write_text("not a folder")
    path = _config(tmp_path, output_dir=str(tmp_path / "afile"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile is a file, not a folder, so the run folder" in err and "output_dir" in err


def _read_only(run, *args):
    """Runs ``synthaug *args`` with ``run`` read-only: a read-only bind mount in a private mount namespace as root
    (root writes through permission bits), ``chmod a-w`` otherwise; None when neither can be made."""
    command = [sys.executable, "-m", "synthaug", *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            return None
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(run), *command]
    else:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        if os.access(run, os.W_OK):
            return None
    out = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    return None if "mount:" in out.stderr or "unshare:" in out.stderr else out


def test_read_only_run_folder_is_named_and_left_intact(tmp_path):
    from synthaug.cli import main

    path = _config(tmp_path)
    assert main(["generate", str(path)]) == 0
    run = tmp_path / "runs" / "run"
    before = _tree_hash(run)
    try:
        grown = _read_only(run, "generate", path, "--set", "plan.counts={owl: 3}")  # synthetic/ must be written
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    if grown is None:
        pytest.skip("LOUD SKIP: cannot make a folder read-only here (no read-only bind mount as root, and the file "
                    "system ignores permission bits): the read-only run folder case is untested")
    assert grown.returncode == 2, grown.stderr[-2000:]
    err = grown.stderr.strip().splitlines()
    assert "Traceback" not in grown.stderr and len(err) == 1
    assert str(run) in err[0] and ("read-only file system" in err[0] or "permission denied" in err[0])
    assert "Make it writable" in err[0]
    assert _tree_hash(run) == before  # nothing half-written


# ------------------------------------------------------------------------------------------ 3. one writer
HOLD = textwrap.dedent("""
    import sys, time
    from synthaug.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_by_name_and_a_killed_holder_never_blocks(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path)
    run = tmp_path / "runs" / "run"
    proc = _holder(run, 60)
    try:
        who = holder(run)
        assert who["pid"] == proc.pid and "synthaug.runlock" not in who["command"]
        started = time.monotonic()
        assert main(["run", str(path)]) == 2
        assert time.monotonic() - started < 10
        err = capsys.readouterr().err
        assert f"is in use by another synthaug process (pid {proc.pid}" in err and "--wait" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before anything was written
        with pytest.raises(RunFolderBusy):
            RunLock(run).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(run) as lock:  # the lock died with its holder
        assert holder(run)["pid"] == os.getpid() and lock.holding
    assert (run / ".lock").read_text() == ""  # emptied on release


def test_wait_waits_for_the_holder(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run, 1.5)
    try:
        started = time.monotonic()
        with RunLock(run, wait=True):
            assert time.monotonic() - started > 0.5 and holder(run)["pid"] == os.getpid()
    finally:
        proc.wait()


def test_lock_is_reentrant_in_one_process_and_taken_by_rank_0_alone(tmp_path):
    from synthaug.runner import open_run
    from synthaug.runner.records import StageRecords
    from synthaug.processes import Processes

    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    first.acquire()
    second.acquire()  # a second run (or main() called again) in this process shares the lock
    second.release()
    assert holder(tmp_path / "run")["pid"] == os.getpid()
    first.release()
    assert (tmp_path / "run" / ".lock").read_text() == ""
    cfg = load_config(_config(tmp_path))
    ctx = open_run(cfg, lock=RunLock(cfg.run_dir))
    rank1 = StageRecords(cfg, Processes(index=1, count=2), ctx.lock)  # another rank of one `accelerate launch`
    rank1.hold_lock()
    assert not ctx.lock.holding and not cfg.run_dir.exists()
    ctx.records.hold_lock()
    assert ctx.lock.holding
    ctx.lock.release()


def test_stats_on_a_finished_run_needs_no_lock(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path)
    assert main(["stats", str(path)]) == 0
    proc = _holder(tmp_path / "runs" / "run", 60)
    try:
        assert main(["stats", str(path)]) == 0  # a reader: the data stage is done
        assert "Bar chart" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------------------------------ 4. bounded plans
BOUNDED = textwrap.dedent("""
    import re, resource, sys, time
    import synthaug.cli, synthaug.runner  # every import first: the ceiling is on what the plan allocates
    from synthaug.cli import main
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    started = time.monotonic()
    rc = main(sys.argv[1:])
    print(f"rc={rc} seconds={time.monotonic() - started:.2f}")
""")


def test_absurd_plan_is_refused_before_it_is_built_under_a_memory_ceiling(tmp_path):
    path = _config(tmp_path)
    out = subprocess.run([sys.executable, "-c", BOUNDED, "stats", str(path), "--set", "plan.counts={owl: 1000000000000}"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert "rc=2" in out.stdout, out.stderr[-3000:]
    assert float(out.stdout.split("seconds=")[1]) < 20
    assert "The generation plan has 1,000,000,000,000 items; the most synthaug plans is 10,000,000. Lower " \
           "plan.counts." in out.stderr
    assert not (tmp_path / "runs").exists()


def test_plan_bounds_name_the_setting():
    from synthaug.plan import balance_counts, check_plan_size, ratio_counts, unconditional_items

    with pytest.raises(SettingError, match=r"3e\+40 items.*Lower plan\.ratio"):
        ratio_counts([10, 20], 1e39)
    with pytest.raises(SettingError, match=r"Lower plan\.target"):
        balance_counts([10, 20], 10**20)
    with pytest.raises(SettingError, match=r"200,001 items; more than 10,000 per training image \(20 training "
                                           r"images, so at most 200,000\)"):
        check_plan_size(200_001, setting="plan.counts", n_train=20)
    with pytest.raises(SettingError, match=r"Lower pseudo\.count"):
        unconditional_items(10**8, seed=0)
    check_plan_size(200_000, setting="plan.counts", n_train=20)


# ------------------------------------------------------------------------------------------ 5. no stale start
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tiny_sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipeline")


def test_failed_pipeline_load_leaves_the_generator_stage_fresh(tiny_sd, tmp_path):
    from synthaug.runner import open_run
    from synthaug.runner.generate import fit_generator

    def experiment(model):
        return open_run(load_config(_config(tmp_path, generator={
            "name": "sd-text2img", "params": {"model": str(model), "num_inference_steps": 2, "height": 16,
                                              "width": 16}})))

    run = tmp_path / "runs" / "run"
    with pytest.raises(FileNotFoundError):
        fit_generator(experiment(tmp_path / "no-such-pipeline"))
    assert not (run / "generator").exists() and (run / "data" / "done.json").is_file()
    # a folder left by an attempt before this fix is no obstacle either
    (run / "generator").mkdir()
    (run / "generator" / "started.json").write_text(json.dumps({"fingerprint": "0" * 16, "parts": {}}))
    fit_generator(experiment(tiny_sd))  # the right path: accepted
    assert json.loads((run / "generator" / "done.json").read_text())["generator"] == "sd-text2img"


# ------------------------------------------------------------------------------------------ 6. claims
def test_image_over_max_image_pixels_is_refused(tmp_path):
    from synthaug.data.images import decode_problem

    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 10^8 pixels: over the 89.5 M limit, under twice it
    assert 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow alone would only warn and load it
        problem = decode_problem(path, "L")
    assert problem.startswith("too many pixels (Image size (100000000 pixels, 10000×10000) exceeds limit")


def test_symlinked_duplicate_names_the_link(tmp_path):
    from synthaug.data import DataError, load_source

    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "link.png").symlink_to(tmp_path / "imgs" / "3.png")
    rows = "".join(f"imgs/{i}.png,{'a' if i < 8 else 'b'}\n" for i in range(12))
    (tmp_path / "labels.csv").write_text("image,label\nimgs/link.png,a\n" + rows)
    with pytest.raises(DataError, match=r"labels\.csv line 2 \(as .*imgs/link\.png, a symbolic link to .*imgs/3\.png\) "
                                        r"and labels\.csv line 6 \(as .*imgs/3\.png\): one file"):
        load_source("manifest", manifest=tmp_path / "labels.csv", test_per_class=1, val_per_class=1)


# ------------------------------------------------------------------------------------------ 7. no torch
NO_TORCH = textwrap.dedent("""
    import sys, time
    started = time.monotonic()
    from synthaug.cli import main
    from synthaug.config import load_config
    load_config(sys.argv[1])
    rc = main(["run", sys.argv[1], "--set", "train.epoch=3"])
    heavy = sorted(m for m in ("torch", "diffusers", "timm", "transformers", "torchvision") if m in sys.modules)
    print(f"rc={rc} heavy={heavy} seconds={time.monotonic() - started:.2f}")
""")


def test_config_validation_imports_no_torch(tmp_path):
    path = _config(tmp_path)
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(path)], env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert "rc=2 heavy=[]" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "train.epoch" in out.stderr and "did you mean 'epochs'" in out.stderr


# ------------------------------------------------------------------------------------------ 8. plan, then act
def test_refused_rerun_lists_every_conflict_and_changes_no_byte(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path, arms=[{"name": "real-ce"}, {"name": "synth", "synthetic": "generated",
                                                            "train": {"mixing": "combined"}}])
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "run"
    before = _tree_hash(run)
    capsys.readouterr()
    # a sampling change alone would regenerate the set; here arms trained on the old set and a changed arm refuse
    assert main(["run", str(path), "--set", "generator.params.image_size=8", "--set", "arms.0.train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "nothing was run or written" in err
    assert "train/real-ce/seed0 (completed with other inputs: train changed)" in err
    assert "train/synth/seed0 (completed with other inputs: synthetic changed)" in err
    assert "delete those folders" in err and "--set name=" in err
    assert _tree_hash(run) == before  # config.yaml, data/, synthetic/ and the records: byte for byte
    assert not list(run.glob("*.stale-*"))
    # an arm's training change alone, from `train`, is refused too, before any arm trains
    assert main(["train", str(path), "--set", "arms.1.train.epochs=2"]) == 2
    assert "train/synth/seed0" in capsys.readouterr().err and _tree_hash(run) == before


# ------------------------------------------------------------------------------------------ 9. --force-redo
def test_force_redo_names_trained_stages_and_redoes_what_was_trained_on_them(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path, arms=[{"name": "real-ce"}, {"name": "synth", "synthetic": "generated",
                                                            "train": {"mixing": "combined"}}])
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "run"
    before, old = _tree_hash(run), {rel: json.loads((run / rel / "done.json").read_text())["fingerprint"]
                                    for rel in ("generator", "train/real-ce/seed0", "train/synth/seed0")}
    capsys.readouterr()
    changed = ["--set", "data.val_per_class=2"]  # other splits: the generator and both arms conflict
    assert main(["run", str(path), *changed]) == 2
    err = capsys.readouterr().err
    assert "generator (completed with other inputs: data changed)" in err
    assert "--force-redo generator --force-redo train/real-ce/seed0 --force-redo train/synth/seed0" in err
    assert "--keep-stale" in err and "delete those folders" in err and "--set name=" in err

    # a name that is no stage of this command, or derived data, is an error listing the valid names
    for name, why in (("train/nope", "--force-redo train/nope names no stage of this command"),
                      ("synthetic", "synthetic is derived data, redone on its own")):
        assert main(["run", str(path), *changed, "--force-redo", name]) == 2
        err = capsys.readouterr().err
        assert why in err and "Valid names: generator, train/real-ce/seed0, train/synth/seed0" in err
    # the generator's redo takes the arm trained on its images along, not the real-only arm
    assert main(["run", str(path), *changed, "--force-redo", "generator"]) == 2
    err = capsys.readouterr().err
    assert "(--force-redo accepted: generator, train/synth/seed0)" in err
    assert "  - train/real-ce/seed0 (completed with other inputs: data changed)" in err
    assert "  - train/synth/seed0" not in err and "  - generator" not in err
    assert _tree_hash(run) == before  # every refusal: nothing written, config.yaml included

    assert main(["run", str(path), *changed, "--force-redo", "generator", "--force-redo", "train/real-ce"]) == 0
    now = {rel: json.loads((run / rel / "done.json").read_text())["fingerprint"] for rel in old}
    assert all(now[rel] != old[rel] for rel in old)  # all three redone with the new inputs
    assert "val_per_class: 2" in (run / "config.yaml").read_text()
    assert not list(run.rglob("*.stale-*"))  # the old folders went once the new ones were complete
    assert main(["run", str(path), *changed, "--force-redo", "train/*"]) == 0  # nothing conflicts: a no-op
    assert {rel: json.loads((run / rel / "done.json").read_text())["fingerprint"] for rel in old} == now


# ------------------------------------------------------------------------------------------ 10. stale results
def test_keep_stale_then_clean_lists_sizes_and_removes_only_leftovers(tmp_path, capsys):
    from synthaug.cli import main

    path = _config(tmp_path)
    assert main(["generate", str(path)]) == 0
    run = tmp_path / "runs" / "run"
    assert main(["generate", str(path), "--set", "generator.params.image_size=8", "--keep-stale"]) == 0
    stale = list(run.glob("synthetic.stale-*"))
    assert len(stale) == 1 and len((stale[0] / "metadata.jsonl").read_text().splitlines()) == 2
    partial = run / "synthetic" / "model.partial"  # an unfinished write a killed process left in a finished stage
    partial.mkdir()
    (partial / "weights.bin").write_bytes(b"\0" * 5000)
    unfinished = run / "scratch" / "step-1.partial"  # inside a stage with no done.json: still in use
    unfinished.mkdir(parents=True)
    (run / "scratch" / "started.json").write_text("{}")
    capsys.readouterr()

    assert main(["clean", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{stale[0].name}  (stale result)" in out and "5.0 KB  synthetic/model.partial" in out
    assert "Would remove 2 item(s)" in out and "scratch" not in out
    assert stale[0].is_dir() and partial.is_dir()
    proc = _holder(run, 60)  # cleaning takes the run lock
    try:
        assert main(["clean", str(run)]) == 2
        assert f"is in use by another synthaug process (pid {proc.pid}" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["clean", str(run)]) == 0
    assert "Removed 2 item(s)" in capsys.readouterr().out
    assert not stale[0].exists() and not partial.exists() and unfinished.is_dir()
    assert (run / "synthetic" / "done.json").is_file()
    assert main(["clean", str(tmp_path / "images")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_a_redo_killed_midway_keeps_the_old_result_until_the_new_one_is_complete(tmp_path, capsys):
    from synthaug.cli import main
    from synthaug.runner import open_run

    ctx = open_run(load_config(_config(tmp_path)))
    run = ctx.dir
    with ctx.records.record("table", {"rows": 1}, redo=True) as summary:
        (run / "table" / "rows.txt").write_text("old result\n")
    with pytest.raises(KeyboardInterrupt):  # killed while the new result is half made
        with ctx.records.record("table", {"rows": 2}, redo=True) as summary:
            (run / "table" / "rows.txt").write_text("half")
            raise KeyboardInterrupt
    old = next(run.glob("table.stale-*"))
    assert (old / "rows.txt").read_text() == "old result\n" and not (run / "table" / "done.json").exists()
    assert main(["clean", str(run)]) == 0  # the old result is the only complete one: kept
    assert "kept: the redo of" in capsys.readouterr().out and old.is_dir()
    with ctx.records.record("table", {"rows": 2}, redo=True) as summary:  # the rerun finishes the redo ...
        assert summary is not None
        (run / "table" / "rows.txt").write_text("new result\n")
    assert not old.exists() and (run / "table" / "done.json").is_file()  # ... and only then drops the old one


# ------------------------------------------------------------------------------------------ 11. every writer locks
TUNE = {"tune": {"space": {"train.lr": {"low": 1e-4, "high": 1e-1, "log": True}}, "n_trials": 1, "epochs": 1,
                 "last_k": 1, "plots": False}}


@pytest.mark.parametrize("command", [["tune"], ["study"], ["evaluate-fidelity"], ["fewshot", "--shots", "1",
                                                                                 "--draws", "1"]])
def test_other_writers_take_the_run_lock(tmp_path, capsys, command):
    from synthaug.cli import main

    path = _config(tmp_path, **TUNE)
    run = tmp_path / "runs" / "run"
    proc = _holder(run, 60)
    try:
        started = time.monotonic()
        assert main([command[0], str(path), *command[1:]]) == 2
        assert time.monotonic() - started < 10
        err = capsys.readouterr().err
        assert f"is in use by another synthaug process (pid {proc.pid}" in err and "--wait" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before anything was written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


SHARED = textwrap.dedent("""
    import sys, time
    from synthaug.runlock import RunLock
    RunLock(sys.argv[1], shared=True).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_tune_workers_share_the_lock_and_exclude_other_writers(tmp_path):
    run = tmp_path / "run"
    worker = subprocess.Popen([sys.executable, "-c", SHARED, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"pid {worker.pid}.*\(and maybe other tune workers\)"):
            RunLock(run).acquire()  # any other writer is refused
        with RunLock(run, shared=True):  # a second tune worker joins
            assert holder(run)["pid"] == os.getpid()
        assert holder(run) is not None  # the first worker still holds it: its release left the file alone
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    with RunLock(run):  # the last worker gone: an exclusive writer gets it
        pass


# ------------------------------------------------------------------------------------------ 12. lazy stats
def test_stats_of_a_large_allowed_plan_builds_no_items_under_a_memory_ceiling(tmp_path):
    _images(tmp_path / "images", counts=(500, 200, 100))  # 791 training images: plans up to 7,910,000 allowed
    path = _config(tmp_path)
    out = subprocess.run([sys.executable, "-c", BOUNDED, "stats", str(path), "--set", "plan.counts={owl: 7000000}"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    # 7 * 10^6 plan items would take ~1.5 GB (~220 bytes each) over the 1 GB ceiling, and ~20 s
    assert "rc=0" in out.stdout, out.stderr[-3000:]
    assert float(out.stdout.split("seconds=")[1]) < 20
    assert "Generation plan: 7,000,000 synthetic images (fixed): owl: 7,000,000" in out.stdout


def test_lazy_plan_counts_are_the_counts_of_the_plan_items():
    from synthaug.data.schema import LabelSchema
    from synthaug.plan import generation_counts, make_items, rare_attribute_counts, rare_attribute_items

    rng = np.random.default_rng(0)
    schema = LabelSchema.from_dict({"top": ["shirt", "coat", "vest"], "colour": ["red", "blue"]})
    labels = np.stack([rng.choice(3, 60, p=[0.8, 0.15, 0.05]), rng.choice(2, 60, p=[0.9, 0.1])], 1)
    ids = [f"img{i}.png" for i in range(60)]
    for plan in ({"total": 37}, {"per_source": 3}):
        items = rare_attribute_items(schema, labels, ids, seed=1, **plan)
        counts = rare_attribute_counts(schema, labels, ids, seed=1, **plan)
        for g, n in enumerate(schema.group_sizes):
            assert counts[g].tolist() == np.bincount([it.labels[g] for it in items], minlength=n).tolist()
    single = LabelSchema.from_dict({"label": ["a", "b", "c"]})
    counts = generation_counts([5, 0, 2], strategy="fixed", overgenerate=1.5, n_train=10)
    assert counts.tolist() == [8, 0, 3] == np.bincount([it.labels[0] for it in make_items(single, counts, seed=0)],
                                                       minlength=3).tolist()
    with pytest.raises(SettingError, match=r"Lower plan\.counts or plan\.overgenerate"):
        generation_counts([60_000, 0, 0], strategy="fixed", overgenerate=2, n_train=10)
