"""Filters between generation and training, on constructed cases: a test generator that returns exact copies
of real training images, repeats, or real images of another class than the one asked for."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthaug.cli import main
from synthaug.config import build_config
from synthaug.errors import ConfigError
from synthaug.runner import open_run
from synthaug.runner.filter import filter_stage, filtered_images
from synthaug.runner.generate import synthetic_images, synthetic_stage
from synthaug.filters.base import lowest_per_class
from synthaug.generators import GENERATORS, Generated, Generator, GeneratorConfig, register_generator
from synthaug.plan import overgenerate_counts, take_per_class
from synthaug.store import open_store


class CopierConfig(GeneratorConfig):
    # copies: even items copy a real training image of their class, odd ones are noise (items 1 and 3 alike);
    # wrong-class: even items copy a real image of their class, odd ones a real image of the next class
    pattern: str = "copies"


if "test-copier" not in GENERATORS:

    @register_generator("test-copier")
    class CopierGenerator(Generator):
        config_class = CopierConfig

        def fit(self, real):
            pixels = np.stack([np.asarray(real.image(i)) for i in range(len(real))])
            self.workdir.mkdir(parents=True, exist_ok=True)
            np.savez(self.workdir / "real.npz", pixels=pixels, labels=real.labels[:, 0])

        def sample(self, items):
            real = np.load(self.workdir / "real.npz")
            pixels, labels, n = real["pixels"], real["labels"], len(self.schema.groups[0].classes)
            out = []
            for it in items:
                c, k = it.labels[0], int(it.item_id.rsplit("-", 1)[1])
                if k % 2 == 0 or self.config.pattern == "wrong-class":
                    source = c if k % 2 == 0 else (c + 1) % n
                    of_class = np.flatnonzero(labels == source)
                    image = pixels[of_class[(k // 2) % len(of_class)]]
                else:
                    rng = np.random.default_rng(1 if k in (1, 3) else it.seed)
                    image = rng.integers(0, 255, pixels.shape[1:], dtype=np.uint8)
                out.append(Generated(Image.fromarray(image), {}))
            return out


def config(tmp_path, **over):
    raw = {
        "name": "filters", "output_dir": str(tmp_path / "runs"), "progress": False, "device": "cpu",
        "data": {"source": "digits", "longtail": {"imbalance_ratio": 5}},
        "generator": {"name": "test-copier"},
        "plan": {"strategy": "fixed", "counts": {"0": 6, "9": 6}},
        "train": {"epochs": 2, "batch_size": 32, "precision": "fp32"},
        "judge": {"enabled": False}, "evaluation": {"enabled": False},
        "arms": [{"name": "real-ce", "train": {"loss": "ce"}},
                 {"name": "oversample", "train": {"loss": "ce", "mixing": "oversample"}},
                 {"name": "synth", "synthetic": "generated", "train": {"mixing": "combined", "epochs": 1}},
                 {"name": "synth-unfiltered", "synthetic": "generated", "use_filters": False,
                  "train": {"mixing": "combined", "epochs": 1}}],
    }
    for key, value in over.items():
        raw[key] = value
    return build_config(raw)


def decisions(exp):
    return {r["item_id"]: r for r in map(json.loads, (exp.dir / "filter" / "decisions.jsonl").read_text().splitlines())}


def test_per_class_helpers():
    classes = np.array([0, 0, 0, 0, 1, 1])
    assert lowest_per_class(np.array([4, 1, 3, 2, 5, 0]), classes, 0.5).tolist() == [0, 1, 0, 1, 0, 1]
    keep = np.array([0, 1, 1, 1, 1, 1], bool)
    assert take_per_class(classes, keep, [2, 5]).tolist() == [0, 1, 1, 0, 1, 1]
    assert overgenerate_counts([4, 0, 10], 1.5).tolist() == [6, 0, 15]


@pytest.mark.slow
def test_near_duplicate_rejects_copies_keeps_them_on_disk_and_overgeneration_reaches_the_target(tmp_path):
    cfg = config(tmp_path, filters=[{"name": "near-duplicate"}],
                 plan={"strategy": "fixed", "counts": {"0": 3, "9": 3}, "overgenerate": 2.5})
    exp = open_run(cfg)
    record = filter_stage(exp)
    d = decisions(exp)
    assert len(d) == 16 and record["planned"] == 16  # ceil(3 × 2.5) = 8 per class
    for item_id, rec in d.items():
        k = int(item_id.rsplit("-", 1)[1])
        nd = rec["filters"]["near-duplicate"]
        if k % 2 == 0:  # an exact copy of a real training image of its class
            assert not rec["kept"] and "real training image" in nd["reason"] and nd["score"] < 1e-6
        elif k == 3:  # the same noise image as item 1
            assert not rec["kept"] and "earlier synthetic image" in nd["reason"]
        else:
            assert rec["kept"] and nd["reason"] is None
    # kept: items 1, 5, 7 per class; the target of 3 is reached only thanks to over-generation
    selected = filtered_images(exp)
    assert sorted(selected.ids) == sorted(f"{c}-{k:05d}" for c in "09" for k in (1, 5, 7))
    assert record["short"] == {}
    # the unfiltered arm takes the first 3 items of each class, what a plan without over-generation makes
    assert sorted(synthetic_images(exp).ids) == sorted(f"{c}-{k:05d}" for c in "09" for k in range(3))
    # rejected images stay on disk and in the store's manifest
    store = open_store(exp.dir / "synthetic")
    assert len(store) == 16 and all((store.root / r["file_name"]).is_file() for r in store.records())
    summary = json.loads((exp.dir / "filter" / "summary.json").read_text())["classes"]
    assert [(r["class"], r["planned"], r["rejected_near-duplicate"], r["selected"]) for r in summary
            if r["planned"]] == [("0", 8, 5, 3), ("9", 8, 5, 3)]
    from synthaug.report.tables import filter_table

    assert "| 9 | 8 | 5 | 3 | 3 | 3 | 0 |" in filter_table(exp.dir)  # planned, rejected, kept, selected, target, short
    assert not any("Warning" in line or "Note" in line for line in filter_table(exp.dir))  # every target reached


@pytest.mark.slow
def test_a_set_the_filters_left_short_of_its_plan_is_a_warning_in_both_reports(tmp_path):
    # 6 images per class without over-generation: the copies (items 0, 2, 4) and the repeat (3) are rejected
    exp = open_run(config(tmp_path, filters=[{"name": "near-duplicate"}]))
    filter_stage(exp)
    from synthaug.report.html import write_html_report
    from synthaug.report.tables import filter_table

    warning = ("The filters selected 4 of the 12 synthetic images the plan asked for (33 %); classes short: "
               "0 (2 of 6), 9 (2 of 6). Arms with use_filters train on the selected images only. The near-duplicate "
               "filter rejected 8 of the 12 generated images: raise plan.overgenerate (now 1)")
    assert f"**Warning:** {warning}" in "\n".join(filter_table(exp.dir))
    page = write_html_report(exp.dir).read_text()
    assert 'id="filters"' in page and f"<b>Warning:</b> {warning}" in page
    assert "<td>9</td><td>6</td><td>4</td><td>2</td><td>2</td><td>6</td><td>4</td>" in page  # the class's row


@pytest.mark.slow
def test_confidence_rejects_wrong_class_and_a_new_threshold_neither_regenerates_nor_rescores(tmp_path, capsys):
    cfg = config(tmp_path, filters=[{"name": "confidence", "min_probability": 0.5}],
                 generator={"name": "test-copier", "params": {"pattern": "wrong-class"}},
                 plan={"strategy": "fixed", "counts": {"0": 6, "1": 6}})
    cfg.arms[1].train.update(epochs=6, lr=0.005)
    exp = open_run(cfg)
    filter_stage(exp)
    d = decisions(exp)
    wrong = [r for i, r in d.items() if int(i[-1]) % 2 == 1]
    right = [r for i, r in d.items() if int(i[-1]) % 2 == 0]
    assert sum(not r["kept"] for r in wrong) >= 5 and sum(r["kept"] for r in right) >= 5
    assert all("p(" in r["filters"]["confidence"]["reason"] for r in wrong if not r["kept"])
    # the scoring classifier is the default's oversample arm, trained on the long-tailed training split
    assert (exp.dir / "train" / "oversample" / "seed0" / "model" / "classifier.json").is_file()

    generated = (exp.dir / "synthetic" / "done.json").stat().st_mtime_ns
    scored = (exp.dir / "filter-scores" / "confidence" / "done.json").stat().st_mtime_ns
    scores = {i: r["filters"]["confidence"]["score"] for i, r in d.items()}
    path = tmp_path / "c.yaml"
    import yaml

    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw["filters"] = [{"name": "confidence", "keep_top_percent": 50}]
    path.write_text(yaml.safe_dump(raw))
    assert main(["filter", str(path), "--keep-stale"]) == 0
    out = capsys.readouterr().out
    assert "rejected_confidence" in out and "decisions.jsonl" in out
    assert (exp.dir / "synthetic" / "done.json").stat().st_mtime_ns == generated
    assert (exp.dir / "filter-scores" / "confidence" / "done.json").stat().st_mtime_ns == scored
    d2 = decisions(exp)
    assert {i: r["filters"]["confidence"]["score"] for i, r in d2.items()} == scores
    for c in "01":  # the top half of each class by the cached probability
        ranked = sorted((i for i in d2 if i.startswith(c)), key=lambda i: -scores[i])
        assert {i for i in ranked[:3]} == {i for i in ranked if d2[i]["kept"]}
    assert list(exp.dir.glob("filter.stale-*"))  # the old decisions are kept aside (--keep-stale)

    # the filtered arm trains on the selected images, the unfiltered one on the plan's
    assert main(["train", str(path), "--arm", "synth", "--arm", "synth-unfiltered"]) == 0
    done = {a: json.loads((exp.dir / "train" / a / "seed0" / "done.json").read_text())
            for a in ("synth", "synth-unfiltered")}
    assert done["synth"]["synthetic"] == 6 and done["synth-unfiltered"]["synthetic"] == 12


def test_filter_config_errors():
    with pytest.raises(ConfigError, match="'confidence', 'clip-score', 'near-duplicate'"):
        build_config({"filters": [{"name": "sharpness"}]})
    with pytest.raises(ConfigError, match="no filters are configured"):
        build_config({"plan": {"overgenerate": 2}})
    with pytest.raises(ConfigError, match="real-only arm"):
        build_config({"filters": [{"name": "confidence", "classifier_arm": "synth-bsm"}]})
    with pytest.raises(ConfigError, match="use_filters"):
        build_config({"arms": [{"name": "a", "use_filters": False}]})


def tiny_clip(path):
    from tiny_sd import tiny_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = tiny_clip_tokenizer(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": 16, "patch_size": 4},
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def test_clip_score_rejects_the_bottom_of_each_class_and_says_when_the_model_is_missing(tmp_path, capsys):
    from transformers import CLIPModel, CLIPProcessor

    model_dir = tiny_clip(tmp_path / "clip")
    cfg = config(tmp_path, filters=[{"name": "clip-score", "model": str(model_dir), "reject_bottom_percent": 50}])
    exp = open_run(cfg)
    filter_stage(exp)
    d = decisions(exp)
    # the scores are CLIP's own image–text cosine similarity to "a photo of a <class>"
    model, processor = CLIPModel.from_pretrained(model_dir), CLIPProcessor.from_pretrained(model_dir)
    images = synthetic_stage(exp).load(mode="L")
    inputs = processor(text=["a photo of a 0", "a photo of a 9"], images=[images.image(i).convert("RGB")
                       for i in range(len(images))], return_tensors="pt", padding=True)
    with torch.no_grad():
        sim = model(**inputs).logits_per_image / model.logit_scale.exp()
    for i, item_id in enumerate(images.ids):
        column = 0 if item_id.startswith("0") else 1
        assert d[item_id]["filters"]["clip-score"]["score"] == pytest.approx(float(sim[i, column]), abs=1e-4)
    for c in "09":
        ranked = sorted((i for i in d if i.startswith(c)), key=lambda i: d[i]["filters"]["clip-score"]["score"])
        assert [d[i]["kept"] for i in ranked] == [False] * 3 + [True] * 3
        assert "bottom 50 %" in d[ranked[0]]["filters"]["clip-score"]["reason"]

    path = tmp_path / "missing.yaml"
    import yaml

    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw["filters"] = [{"name": "clip-score", "model": str(tmp_path / "no-clip")}]
    raw["name"] = "missing"
    path.write_text(yaml.safe_dump(raw))
    assert main(["filter", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no-clip" in err and "CLIP" in err and "filters.*.model" in err
