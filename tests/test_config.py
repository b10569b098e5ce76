import pytest

from synthaug.config import ConfigError, build_config, load_config


def test_defaults_have_the_study_arms():
    cfg = build_config({})
    assert [a.name for a in cfg.arms] == ["real-ce", "real-bsm", "oversample", "synth-combined",
                                          "synth-balanced-batch", "synth-bsm", "synth-oversample", "pseudo-combined"]
    assert cfg.arm_train(cfg.arm("real-bsm")).loss == "balanced-softmax"


def test_overrides_parse_yaml_values():
    cfg = build_config({"train": {"epochs": 3}}, ["train.epochs=7", "seeds=[1, 2]", "data.longtail.imbalance_ratio=50",
                                                   "arms.1.train.lr=0.5"])
    assert cfg.train.epochs == 7 and cfg.seeds == [1, 2] and cfg.data.longtail.imbalance_ratio == 50
    assert cfg.arm_train(cfg.arms[1]).lr == 0.5


@pytest.mark.parametrize("raw, message", [
    ({"train": {"epochs": 0}}, r"train\.epochs.*greater than or equal to 1.*got 0"),
    ({"train": {"lossx": "ce"}}, r"train\.lossx.*Extra inputs"),
    ({"train": {"loss": "focal"}}, r"train\.loss.*Unknown loss 'focal'; valid names: balanced-softmax"),
    ({"train": {"loss": "balanced_softmax"}}, r"Unknown loss 'balanced_softmax'; did you mean 'balanced-softmax'\?"),
    ({"data": {"source": "cifar"}}, r"data\.source.*Unknown data source 'cifar'.*mnist5k"),
    ({"data": {"source": "imagefolder"}}, r"needs data\.root"),
    ({"generator": {"name": "ddpm", "params": {"guidance_scale": -1}}}, r"generator\.params\.guidance_scale"),
    ({"generator": {"name": "dalle"}}, r"Unknown generator 'dalle'"),
    ({"arms": [{"name": "x", "train": {"mixing": "combined"}}]}, r"arms\.0.*needs synthetic images"),
    ({"arms": [{"name": "x", "train": {"batch_size": "big"}}]}, r"arms\.0\.train\.batch_size"),
])
def test_errors_name_the_field_and_value(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_config(raw)


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=3"], r"train\.epoch: Extra inputs are not permitted \(got 3\); did you mean 'epochs'\?"),
    (["generator.params.guidence_scale=2"], r"generator\.params\.guidence_scale: .*did you mean 'guidance_scale'\?"),
    (["evaluation.extractor_source=x"], r"'extractor_source' belongs under evaluation\.fidelity\."),
    (["filters=[{name: confidence, min_prob: 0.5}]"], r"filters\.0\.confidence\.min_prob: .*did you mean "
                                                      r"'min_probability'\?"),
    (["arms.0.train.lrr=0.1"], r"\n  arms\.0\.train\.lrr: .*did you mean 'lr'\?$"),
    (["evaluation.fidelity.kk=3"], r"this section's keys: enabled, extractor, extractor_source, feature_ratio, k,"),
])
def test_unknown_keys_get_the_likely_fix(overrides, message):
    """A typo, an abbreviation or a key in the wrong section says what to write instead."""
    with pytest.raises(ConfigError, match=message) as e:
        build_config({}, overrides)
    assert "Value error" not in str(e.value) and "(top level)" not in str(e.value)


def test_load_config_reports_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("override, message", [
    ("seeds.5=1", r"--set seeds\.5=1: seeds is a list with 1 entries \(indices 0-0\)"),
    ("train.model.head_hidden.0=64", r"train\.model\.head_hidden is not in the config .* set the whole list"),
    ("arms.9.train.lr=0.1", r"--set arms\.9\.train\.lr=0\.1: arms is a list with 8 entries"),
    ("data.source.x=1", r"--set data\.source\.x=1: data\.source is a single value \('mnist5k'\)"),
    ("seeds=[0,", r"--set seeds=\[0,: the value '\[0,' is not valid YAML"),
    ("seeds.x=1", r"--set seeds\.x=1: seeds is a list with 1 entries .* 'x' does not name one"),
    ("train..epochs=3", r"is not a dotted key"),
])
def test_bad_override_paths_name_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"data": {"source": "mnist5k"}, "seeds": [0]}, [override])


def test_synthaug_demo_runs_the_demo_config_the_readme_shows():
    """`synthaug demo` (`make demo`) loads the packaged copy; README and BENCHMARKS point at configs/demo.yaml."""
    from importlib import resources
    from pathlib import Path

    packaged = resources.files("synthaug") / "configs" / "demo.yaml"
    repo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert packaged.read_text() == repo.read_text(), "copy configs/demo.yaml to src/synthaug/configs/demo.yaml"
