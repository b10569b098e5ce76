import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_terminal_summary(terminalreporter, config):
    """The test order's seed (pyproject's addopts), printed under -q too, which hides pytest-randomly's header
    line: ``pytest --randomly-seed=N`` repeats an order."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"tests shuffled with --randomly-seed={seed} (pytest-randomly)")


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after): tiny models run fastest on one, a tuning worker on a shared
    2-core machine should use one, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_tree(tmp_path):
    """A small image folder: root/<class>/<n>.png with imbalanced classes (12 / 8 / 6 images), 16×16 RGB."""

    def make(root=tmp_path / "images", counts=(12, 8, 6), names=("cat", "dog", "owl")):
        rng = np.random.default_rng(0)
        for name, n in zip(names, counts):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / name / f"{i:03d}.png")
        return root

    return make
