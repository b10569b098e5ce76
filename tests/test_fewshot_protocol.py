"""Seed 002's few-shot protocol end to end (synthaug.evaluate.fewshot_protocol) on the 8×8 digits, and the
classifier's local backbone weights (train.model.weights)."""

import argparse
import json
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from synthaug.config import build_config
from synthaug.errors import ConfigError, MissingFileError, SettingError
from synthaug.evaluate import fewshot_protocol
from synthaug.evaluate.fewshot_protocol import add_parser, run_protocol, sweep_configs
from synthaug.train.checkpoint import CheckpointError

# seed 002's classifier in small: a timm backbone (random weights here), the last layer fine-tuned, 50/50 batches
TINY = {
    "name": "fs",
    "progress": False,
    "data": {"source": "digits", "test_per_class": 5, "val_per_class": 2},
    "generator": {"name": "ddpm", "params": {"block_out_channels": [16, 32], "layers_per_block": 1,
                                             "train_steps": 1, "batch_size": 8, "sampling_steps": 1,
                                             "precision": "fp32"}},
    "plan": {"strategy": "ratio", "ratio": 1},
    "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.05, "precision": "fp32",
              "model": {"name": "test_byobnet", "freeze": "all-but-head"}},
    "arms": [{"name": "real", "train": {"mixing": "real-only"}},
             {"name": "synth-bb", "synthetic": "generated", "train": {"mixing": "balanced-batch"}}],
    "judge": {"enabled": False},
    "evaluation": {"enabled": False},
}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "fs.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs")}))
    return path


def _records(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("done.json"))}


@pytest.mark.slow
def test_sweep_runs_each_k_and_draw_resumes_and_reuses(config, tmp_path, monkeypatch):
    sweep = tmp_path / "runs" / "fs" / "fewshot"
    real_run_one, calls = fewshot_protocol._run_one, []

    def interrupted_at_the_third_run(cfg):  # as if the sweep were stopped (Ctrl-C) while the third run starts
        calls.append(cfg.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_one(cfg)

    monkeypatch.setattr(fewshot_protocol, "_run_one", interrupted_at_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(config, shots=[1, 2], draws=2)
    partial = json.loads((sweep / "protocol.json").read_text())
    assert not partial["complete"] and [r["finished"] for r in partial["runs"]] == [True, True, False, False]
    assert {(r["arm"], r["shots"], r["draws"]) for r in partial["rows"]} == {("real", 1, 2), ("synth-bb", 1, 2)}
    assert "incomplete" in (sweep / "protocol.md").read_text()
    before = _records(sweep / "k1-d0") | _records(sweep / "k1-d1")

    monkeypatch.setattr(fewshot_protocol, "_run_one", real_run_one)
    protocol = run_protocol(config, shots=[1, 2], draws=2)  # resumes: the k=1 runs are reused, k=2 ones run
    assert _records(sweep / "k1-d0") | _records(sweep / "k1-d1") == before

    train_ids = {}
    for k in (1, 2):
        for d in (0, 1):
            run = sweep / f"k{k}-d{d}"
            counts = json.loads((run / "data" / "stats.json").read_text())["groups"][0]["counts"]
            assert list(counts.values()) == [k] * 10  # exactly k training images of each digit
            train_ids[k, d] = json.loads((run / "data" / "splits.json").read_text())["train"]
            for arm in ("real", "synth-bb"):
                assert 0 <= json.loads((run / "train" / arm / "seed0" / "metrics.json").read_text())["accuracy"] <= 1
            # the generator saw only the k images: the synthetic set is plan ratio 1 × k per class
            assert len((run / "synthetic" / "metadata.jsonl").read_text().splitlines()) == 10 * k
    assert train_ids[1, 0] != train_ids[1, 1] and train_ids[2, 0] != train_ids[2, 1]  # the draws differ

    assert protocol["complete"] and protocol["variant"] == "end-to-end protocol (seed 002)"
    rows = {(r["arm"], r["shots"]): r for r in protocol["rows"]}
    assert set(rows) == {(a, k) for a in ("real", "synth-bb") for k in (1, 2)}
    for (arm, k), row in rows.items():
        draws = [json.loads((sweep / f"k{k}-d{d}" / "train" / arm / "seed0" / "metrics.json").read_text())["accuracy"]
                 for d in (0, 1)]
        assert row["draws"] == 2 and row["test_accuracy"]["mean"] == pytest.approx(sum(draws) / 2)
        assert row["test_accuracy"]["std"] == pytest.approx(abs(draws[0] - draws[1]) / 2 ** 0.5)  # sample std
        assert 0 <= row["best_val_accuracy"]["mean"] <= 1
    md = (sweep / "protocol.md").read_text()
    assert "end-to-end protocol (seed 002)" in md and "2 draw(s)" in md and "many/medium/few" in md
    assert "random initialisation (seed 002: a pretrained backbone)" in md  # the tests' backbone is not pretrained
    assert (sweep / "protocol.csv").read_text().count("end-to-end protocol (seed 002)") == 4

    start, before = time.time(), _records(sweep)
    assert run_protocol(config, shots=[1, 2], draws=2)["rows"] == protocol["rows"]  # everything reused
    assert _records(sweep) == before and time.time() - start < 30


def test_sweep_configs_and_command_line(config, tmp_path):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fewshot", str(config), "--shots", "1,4", "--draws", "2", "--set", "train.epochs=2"])
    assert (args.shots, args.draws, args.overrides, args.func) == ([1, 4], 2, ["train.epochs=2"],
                                                                   fewshot_protocol.cmd_fewshot)
    assert parser.parse_args(["fewshot", str(config)]).shots == [1, 2, 4, 8, 16]
    with pytest.raises(SystemExit):
        parser.parse_args(["fewshot", str(config), "--shots", "1,two"])

    cfg = build_config({**TINY, "output_dir": str(tmp_path / "runs"), "evaluation": {"few_shot": {"trials": 2}}})
    runs = sweep_configs(cfg, [1, 4], 2)
    assert [(k, d, c.name) for k, d, c in runs] == [(1, 0, "k1-d0"), (1, 1, "k1-d1"), (4, 0, "k4-d0"),
                                                    (4, 1, "k4-d1")]
    k, d, sub = runs[3]
    assert sub.run_dir == tmp_path / "runs" / "fs" / "fewshot" / "k4-d1"
    assert (sub.data.fewshot.shots, sub.data.fewshot.draw) == (4, 1)
    assert not sub.evaluation.few_shot.enabled and sub.evaluation.few_shot.trials == 2  # the quick probe is off
    assert sub.arms == cfg.arms and sub.train == cfg.train
    for shots, draws in (([], 2), ([0, 1], 2), ([2, 2], 2), ([1], 0)):
        with pytest.raises(SettingError):
            sweep_configs(cfg, shots, draws)
    with pytest.raises(SettingError, match="remove data.fewshot"):
        sweep_configs(build_config({**TINY, "data": {"source": "digits", "fewshot": {"shots": 2}}}), [1], 1)
    with pytest.raises(ConfigError):  # a bad override is named before anything runs
        run_protocol(config, shots=[1], draws=1, overrides=["train.loss=focal"])
    assert not (tmp_path / "runs").exists()


def test_backbone_weights_from_a_local_file_or_folder(tmp_path):
    import timm

    from synthaug.data.schema import LabelSchema
    from synthaug.train.config import ModelConfig, TrainConfig
    from synthaug.train.models import create_classifier, load_classifier, save_classifier

    torch.manual_seed(0)
    trained = timm.create_model("test_resnet", num_classes=7)  # a tiny "downloaded" model with its classifier
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    (tmp_path / "repo").mkdir()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "repo" / "model.safetensors")
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "w.pth")
    expected = load_file(tmp_path / "w.safetensors")
    schema = LabelSchema.single(["a", "b"], name="label")
    for weights in ("w.safetensors", "repo", "w.pth"):
        config = ModelConfig(name="test_resnet", weights=str(tmp_path / weights), freeze="all-but-head")
        model = create_classifier(config, schema, 3)
        backbone = model.backbone.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in backbone.items()), weights
        assert "state_dict" not in model.backbone.pretrained_cfg
        assert model.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}  # the backbone's pretrained config
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]
    gray = create_classifier(ModelConfig(name="test_resnet", weights=str(tmp_path / "w.safetensors")), schema, 1)
    assert torch.allclose(gray.backbone.conv1[0].weight, expected["conv1.0.weight"].sum(1, keepdim=True))

    # a saved classifier loads back without the weights file
    save_classifier(model, config, schema, 3, 8, tmp_path / "saved")
    (tmp_path / "w.pth").unlink()
    again, _ = load_classifier(tmp_path / "saved")
    assert all(torch.equal(v, backbone[k]) for k, v in again.backbone.state_dict().items())

    # the new field is in no dump at its default, so arms recorded before it keep their fingerprint
    assert "weights" not in TrainConfig(model={"name": "test_resnet"}).model_dump(mode="json")
    assert TrainConfig(model=config).model_dump(mode="json")["model"]["weights"] == str(tmp_path / "w.pth")


def test_backbone_weights_errors(tmp_path):
    import timm

    from synthaug.data.schema import LabelSchema
    from synthaug.train.config import ModelConfig
    from synthaug.train.models import create_classifier

    schema = LabelSchema.single(["a", "b"], name="label")
    missing = tmp_path / "resnet50.safetensors"
    with pytest.raises(MissingFileError) as e:
        create_classifier(ModelConfig(name="test_resnet", weights=str(missing)), schema, 3)
    assert str(missing) in str(e.value) and "huggingface-cli download" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="neither model.safetensors nor pytorch_model.bin"):
        create_classifier(ModelConfig(name="test_resnet", weights=str(tmp_path / "empty")), schema, 3)

    state = timm.create_model("test_resnet").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match="not a checkpoint of timm model 'test_efficientnet'"):
        create_classifier(ModelConfig(name="test_efficientnet", weights=str(tmp_path / "resnet.safetensors")),
                          schema, 3)
    partial = {k: v.contiguous() for k, v in state.items() if not k.startswith("layer4")}
    save_file(partial, tmp_path / "partial.safetensors")  # would leave layer4 at random initialisation
    with pytest.raises(CheckpointError, match="lacks .* e.g. layer4"):
        create_classifier(ModelConfig(name="test_resnet", weights=str(tmp_path / "partial.safetensors")), schema, 3)
    (tmp_path / "pickle.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="pickle.pth"):
        create_classifier(ModelConfig(name="test_resnet", weights=str(tmp_path / "pickle.pth")), schema, 3)

    with pytest.raises(ValueError, match="small-cnn"):
        ModelConfig(weights=str(missing))
    with pytest.raises(ValueError, match="set pretrained: false"):
        ModelConfig(name="resnet50", pretrained=True, weights=str(missing))
