"""``image-list`` at ImageNet-LT scale: opening a split list of 10^5 lines.

    python bench/image_list.py                     # 1,000 classes, 100,000 lines (90 k train, 10 k test)
    python bench/image_list.py --lines 20000       # smaller

Writes an ImageNet-LT-style layout into a temporary folder: ``train/<synset>/<synset>_<k>.JPEG`` with long-tailed
class counts (exponential profile, imbalance ratio 100), 10 test images per class under ``val/``, one distinct tiny
JPEG file per line (``_check_distinct`` forbids listing a file twice), and ``train.txt`` / ``test.txt``. Then, each
in a fresh process, ``load_source("image-list", ...)``:

- ``checked``: the first open, with the one-time parallel image check (every image decoded once);
- ``listed``: inside ``images_checked_before()``, as a later run of a recorded experiment opens it.

Prints the open time and the peak RSS (``ru_maxrss``) of the process, and its RSS after imports (the baseline).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from synthaug.data import load_source
from synthaug.data.sources import images_checked_before
root, mode = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "listed":
    with images_checked_before():
        splits = load_source("image-list", root=root, train_list="train.txt", test_list="test.txt", val_per_class=2)
else:
    splits = load_source("image-list", root=root, train_list="train.txt", test_list="test.txt", val_per_class=2)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "base_mb": base / 1024, "peak_mb": peak / 1024,
                  "images": len(splits.train) + len(splits.val) + len(splits.test)}))
"""


def class_counts(train_lines: int, classes: int, imbalance_ratio: float = 100.0) -> np.ndarray:
    """Long-tailed training counts summing to about ``train_lines``: n_c ∝ ρ^(−c/(C−1)), at least 5 per class."""
    profile = imbalance_ratio ** (-np.arange(classes) / (classes - 1))
    return np.maximum(5, np.round(profile * train_lines / profile.sum())).astype(int)


def write_layout(root: Path, lines: int, classes: int, test_per_class: int = 10) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    counts = class_counts(lines - classes * test_per_class, classes)
    written = 0
    for split, per_class, folder in (("train", counts, "train"), ("test", [test_per_class] * classes, "val")):
        out = []
        for c, n in enumerate(per_class):
            synset = f"n{c:08d}"
            (root / folder / synset).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                rel = f"{folder}/{synset}/{synset}_{k}.JPEG"
                (root / rel).write_bytes(jpeg)
                out.append(f"{rel} {c}\n")
        (root / f"{split}.txt").write_text("".join(out))
        written += len(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="image-list-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        n = write_layout(root, args.lines, args.classes)
        print(f"wrote {n:,} lines and files ({args.classes} classes) in {time.perf_counter() - start:.1f} s")
        for mode in ("checked", "listed"):
            run = subprocess.run([sys.executable, "-c", CHILD, str(root), mode], capture_output=True, text=True)
            if run.returncode:
                sys.exit(run.stderr)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{mode:8s} {r['images']:,} images: open {r['seconds']:.2f} s, peak RSS {r['peak_mb']:.0f} MB "
                  f"(after imports {r['base_mb']:.0f} MB, +{r['peak_mb'] - r['base_mb']:.0f} MB)")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
