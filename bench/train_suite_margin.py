"""The spread behind tests/test_train_suite.py::test_short_training_beats_chance_on_every_attribute_group: the
same 10-epoch training on the multi-attribute shapes data, for several training seeds, with per-group test
accuracy on the test's 1,200 images. Run it once with the CPU's own kernels and once with AVX2 ones:

    .venv/bin/python bench/train_suite_margin.py --seeds 0,1,2,3,4
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python bench/train_suite_margin.py --seeds 0,1,2,3,4

Prints one JSON line per seed (accuracy per attribute group, and the mean over groups).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import shapes  # noqa: E402
from synthaug.data import LabeledImages, LabelSchema  # noqa: E402
from synthaug.evaluate.metrics import classification_metrics  # noqa: E402
from synthaug.train.loop import TrainConfig, predict, train_classifier  # noqa: E402

SCHEMA = LabelSchema.from_dict(shapes.GROUPS)


def _images(n: int, seed: int, long_tailed: bool) -> LabeledImages:
    pixels, labels = shapes.make_split(n, seed, long_tailed=long_tailed)
    return LabeledImages(SCHEMA, labels, [f"{seed}:{i}" for i in range(n)], pixels=pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, comma-separated")
    args = parser.parse_args()
    real, test, val = _images(600, 0, True), _images(1200, 3, False), _images(40, 1, False)
    cfg = TrainConfig(epochs=10, batch_size=16, lr=3e-3, optimizer="adamw", loss="weighted-ce", weight_k=250 / 11,
                      label_smoothing=0.05, warmup_epochs=1)  # the test's settings
    counts = [real.class_counts(g) for g in range(len(SCHEMA.groups))]
    for seed in map(int, args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as d:
            model = train_classifier(real, None, cfg, Path(d) / "run", val=val, progress=False, seed=seed)
        m = classification_metrics(predict(model, test, 32, device="cpu"), test.labels, SCHEMA, counts)
        print(json.dumps({"seed": seed, **{k: round(v["accuracy"], 3) for k, v in m["groups"].items()},
                          "mean": round(m["accuracy"], 3)}), flush=True)


if __name__ == "__main__":
    main()
