"""One Optuna study on a real PostgreSQL server, shared by ``synthaug tune`` worker processes.

Each worker is the real command (``synthaug.cli.main(["tune", ...])``) with one torch thread; only the
training run inside a trial is swapped for a fast function of the parameters (``tests/tune_worker.py``), so
the claim / budget / heartbeat / retry path is the one users run.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from postgres import postgres_server

WORKER = Path(__file__).with_name("tune_worker.py")


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def write_config(tmp_path: Path, n_trials: int, **tune) -> Path:
    raw = {"name": "pg", "output_dir": str(tmp_path / "runs"), "progress": False,
           "data": {"source": "digits", "longtail": {"imbalance_ratio": 10}},
           "train": {"model": {"name": "small-cnn"}, "epochs": 2, "precision": "fp32"},
           "arms": [{"name": "real-ce"}],
           "tune": {"space": {"train.lr": {"low": 1e-5, "high": 1e-1, "log": True},
                              "train.weight_decay": {"low": 1e-5, "high": 1e-1, "log": True}},
                    "n_trials": n_trials, "epochs": 3, "last_k": 1, "pruner": "none", "plots": False,
                    "heartbeat_interval": 1, "grace_period": 3, "poll_seconds": 0.3, "max_retry": 1, **tune}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_worker(config: Path, url: str, study: str, marks: Path, *, workers: int, delay: float):
    env = {**os.environ, "TUNE_MARKS": str(marks), "TUNE_WORKERS": str(workers), "TUNE_EPOCH_DELAY": str(delay),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), "tune", str(config), "--storage", url, "--study", study,
                             "--threads", "1", "--no-retrain"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def marks_of(marks: Path, kind: str) -> list[tuple[int, int]]:
    """(trial number, worker pid) of each marker ``<kind>-<number>-<pid>``."""
    return sorted((int(p.name.split("-")[1]), int(p.name.split("-")[2])) for p in marks.glob(f"{kind}-*"))


def finish(proc, timeout=90) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_two_workers_share_one_study_with_an_exact_budget(tmp_path, postgres_url):
    config, marks = write_config(tmp_path, n_trials=6), tmp_path / "marks"
    marks.mkdir()
    workers = [start_worker(config, postgres_url, "shared", marks, workers=2, delay=0.25) for _ in range(2)]
    outputs = [finish(w) for w in workers]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6, outputs
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("over_budget") for t in others), \
        "the only other trials are claims beyond the budget, never trained"
    started, done = marks_of(marks, "start"), marks_of(marks, "done")
    assert sorted(n for n, _ in started) == sorted(t.number for t in complete), "each trial trained exactly once"
    assert started == done
    assert {pid for _, pid in started} == {w.pid for w in workers}, "both workers ran trials"
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6, "no parameter set drawn twice"
    assert all("6/6 finished" in out for out in outputs)


def test_a_killed_workers_trial_fails_by_heartbeat_and_is_retried(tmp_path, postgres_url):
    config, marks = write_config(tmp_path, n_trials=4), tmp_path / "marks"
    marks.mkdir()
    victim, survivor = (start_worker(config, postgres_url, "killed", marks, workers=2, delay=0.6)
                        for _ in range(2))
    deadline = time.time() + 90
    while not any(pid == victim.pid for _, pid in marks_of(marks, "epoch")):  # the victim is mid-trial
        assert time.time() < deadline and victim.poll() is None, "the victim never started a trial"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = next(n for n, pid in marks_of(marks, "start") if pid == victim.pid)
    finish(survivor)

    study = optuna.load_study(study_name="killed", storage=postgres_url)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == TrialState.FAIL and not by_number[killed].user_attrs.get("over_budget")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and not [t for t in study.trials if t.state in (TrialState.RUNNING,
                                                                               TrialState.WAITING)]
    retried = [t for t in complete
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retried) == 1 and retried[0].params == by_number[killed].params
    done = [n for n, _ in marks_of(marks, "done")]
    assert sorted(done) == sorted(t.number for t in complete), "every complete trial trained once, to the end"
