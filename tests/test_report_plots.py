"""Report pictures stay readable at 1,000 classes: top and bottom k classes, or shot-group aggregates."""

import numpy as np
from PIL import Image

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.report import plots


def test_shown_classes_head_to_tail_and_top_bottom_k_beyond_50():
    assert plots.shown_classes([5, 9, 1]) == [1, 0, 2]
    counts = np.arange(1000)[::-1] + 1  # class 0 largest
    shown = plots.shown_classes(counts, top_k=10)
    assert shown == list(range(10)) + list(range(990, 1000))


def test_pictures_at_1000_classes(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(1000)]
    counts = np.maximum(1, (500 * 0.99 ** np.arange(1000)).astype(int))
    shot_of = {c: "many" if n > 100 else "few" if n < 20 else "medium" for c, n in zip(classes, counts)}
    series = {"baseline": {c: float(rng.random()) for c in classes}, "augmented": {c: float(rng.random()) for c in classes}}
    bars = plots.per_class_comparison(classes, counts, series, tmp_path / "acc.png", shot_of=shot_of)
    confusion = plots.confusion_plot(rng.integers(0, 5, (1000, 1000)), classes, tmp_path / "conf.png", "1000 classes")
    stacked = plots.class_counts_stacked(classes, counts, 500 - counts, tmp_path / "stacked.png")
    for png in (bars, confusion, stacked):
        with Image.open(png) as im:
            assert 300 < im.size[0] <= 2000 and im.size[1] <= 1200  # a page-sized picture, not 1,000 bars wide

    schema = LabelSchema.single(classes[:60])
    labels = np.repeat(np.arange(60), 3)
    pixels = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
    images = LabeledImages(schema, labels, [str(i) for i in range(len(labels))], pixels=pixels, mode="L")
    grid = plots.real_vs_synthetic_grid(images, images, tmp_path / "grid.png", top_k=5)
    with Image.open(grid) as im:
        assert im.size[1] < 14 + 10 * 36 + 1  # 10 rows (top and bottom 5 of 60 classes)
