"""How many torch threads a `synthaug tune` worker takes: two tune commands side by side, each given
OMP_NUM_THREADS=1 on 2 cores, must take one thread each (2 threads each ran trials 2-5x slower)."""

import os

import pytest

from synthaug.errors import SettingError
from synthaug.tuning.cli import worker_threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def test_default_is_the_cores_shared_by_the_local_workers(two_cores):
    assert worker_threads(None, 1, env={}) == 2
    assert worker_threads(None, 2, env={}) == 1
    assert worker_threads(None, 4, env={}) == 1


def test_omp_num_threads_caps_the_default(two_cores):
    assert worker_threads(None, 1, env={"OMP_NUM_THREADS": "1"}) == 1
    assert worker_threads(None, 1, env={"OMP_NUM_THREADS": "8"}) == 2  # never more than the cores
    assert worker_threads(None, 1, env={"OMP_NUM_THREADS": "x"}) == 2  # not a count: ignored, as torch does


def test_an_explicit_count_wins(two_cores):
    assert worker_threads(3, 1, env={"OMP_NUM_THREADS": "1"}) == 3
    with pytest.raises(SettingError, match="--threads"):
        worker_threads(0, 1, env={})
    with pytest.raises(SettingError, match="--local-workers"):
        worker_threads(None, 0, env={})
