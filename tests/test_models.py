"""The study's reference classifier (SE-ResNeXt50_32x4d, layer4 + head trainable, head 2048 → 512 → 128 → 26),
freeze modes, frozen BatchNorm, offline pretrained loading and `synthaug model-summary`. Random init only."""

import time

import pytest
import torch
import yaml
from torch import nn

import shapes
from synthaug.data import LabelSchema
from synthaug.train.models import ModelConfig, create_classifier, parameter_counts

SCHEMA = LabelSchema.from_dict(shapes.GROUPS)  # 7, 3, 3, 4, 6, 3 classes, like the study's attributes
REFERENCE = {"name": "seresnext50_32x4d", "head_hidden": [512, 128], "dropout": 0.165, "freeze": "all-but-last",
             "trainable_stages": 1}
HEAD_PARAMS = (2048 * 512 + 512) + (512 * 128 + 128) + (128 * 26 + 26)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return create_classifier(ModelConfig(**REFERENCE), SCHEMA, in_chans=3)


def test_reference_configuration_has_the_studys_parameter_count(reference):
    assert parameter_counts(reference) == (17_242_394, 26_629_002)
    trainable = {".".join(n.split(".")[:2]) for n, p in reference.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.layer4", "head.1", "head.4", "head.7"}
    linears = [m for m in reference.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 128), (128, 26)]
    assert [m.p for m in reference.head if isinstance(m, nn.Dropout)] == [0.165] * 3
    logits = reference.eval()(torch.randn(2, 3, 32, 32))
    assert [t.shape[1] for t in reference.split_logits(logits)] == [7, 3, 3, 4, 6, 3]


def test_frozen_batchnorm_keeps_eval_mode_and_running_stats(reference):
    reference.train()
    frozen_bn, trained_bn = reference.backbone.layer3[0].bn1, reference.backbone.layer4[0].bn1
    assert not frozen_bn.training and trained_bn.training and reference.head.training
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    reference(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])
    reference.eval()
    assert not trained_bn.training


@pytest.mark.parametrize("freeze, stages, expected", [
    ("none", 1, "all"),
    ("all-but-head", 1, HEAD_PARAMS),
    ("all-but-last", 2, "layer3+layer4+head"),
])
def test_freeze_modes(freeze, stages, expected):
    model = create_classifier(ModelConfig(**{**REFERENCE, "freeze": freeze, "trainable_stages": stages}), SCHEMA, 3)
    trainable, total = parameter_counts(model)
    if expected == "all":
        assert trainable == total == 26_629_002
    elif expected == HEAD_PARAMS:
        assert trainable == HEAD_PARAMS == 1_118_106
    else:
        layers = sum(p.numel() for m in (model.backbone.layer3, model.backbone.layer4) for p in m.parameters())
        assert trainable == layers + HEAD_PARAMS


def test_freeze_errors_name_the_field():
    with pytest.raises(ValueError, match=r"trainable_stages=6 but 'resnet10t' has 5 stages"):
        create_classifier(ModelConfig(name="resnet10t", freeze="all-but-last", trainable_stages=6), SCHEMA, 3)
    with pytest.raises(ValueError, match="exposes no stages"):
        create_classifier(ModelConfig(name="small-cnn", freeze="all-but-last"), SCHEMA, 3)
    with pytest.raises(ValueError, match=r"Unknown model 'seresnext51'"):
        create_classifier(ModelConfig(name="seresnext51"), SCHEMA, 3)


def test_pretrained_without_weights_fails_fast_with_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"Could not load pretrained weights for 'resnet10t'.*"
                                         r"pretrained: false to train from random initialisation"):
        create_classifier(ModelConfig(name="resnet10t", pretrained=True), SCHEMA, 3)
    assert time.monotonic() - start < 30


def test_model_summary_prints_the_reference_counts(tmp_path, capsys):
    from synthaug.cli import main

    splits = {"train": shapes.make_split(60, 0, long_tailed=False),
              "test": shapes.make_split(10, 1, long_tailed=False)}
    manifest = shapes.write_manifest(tmp_path, splits)
    config = {"name": "summary", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "manifest", "manifest": str(manifest), "label_columns": list(shapes.GROUPS),
                       "classes": shapes.GROUPS},
              "train": {"model": REFERENCE, "image_size": 224},
              "arms": [{"name": "reference"}]}
    path = tmp_path / "summary.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["model-summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "17,242,394 trainable / 26,629,002 total parameters" in out and "[7, 3, 3, 4, 6, 3]" in out
