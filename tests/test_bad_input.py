"""Bad input as a user makes it (issue 7): every case is an error naming the file, line and what to do, or, under
``on_bad_image: skip``, a reported skip. Images and files are made by each test."""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import shapes
from synthaug.data import DataError, load_source
from synthaug.data.images import open_image


def _images(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(folder / f"{i}.png")


def _csv(tmp_path, text, name="labels.csv", encoding="utf-8"):
    _images(tmp_path / "imgs")
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def _rows(n=12, label=lambda i: "a" if i < 8 else "b"):
    return "".join(f"imgs/{i}.png,{label(i)}\n" for i in range(n))


def _load(path, **kw):
    return load_source("manifest", manifest=path, test_per_class=1, val_per_class=1, **kw)


# ------------------------------------------------------------------------------------------ CSV manifests
def test_duplicated_header_column_is_named(tmp_path):
    path = _csv(tmp_path, "image,label,label\n" + "".join(f"imgs/{i}.png,a,b\n" for i in range(12)))
    with pytest.raises(DataError, match=r"labels\.csv line 1: column 'label' appears twice in the header "
                                        r"\(columns 2 and 3\)"):
        _load(path)


@pytest.mark.parametrize("line, message", [
    ("imgs/5.png,a,extra", r"line 7: 3 cells, but the header \(line 1\) has 2 columns .*extra cell\(s\) \['extra'\]"),
    ("imgs/5.png", r"line 7: 1 cells, but the header \(line 1\) has 2 columns .*no cell for column\(s\) \['label'\]"),
])
def test_line_with_extra_or_missing_cells_is_named(tmp_path, line, message):
    rows = _rows().splitlines()
    rows[5] = line
    path = _csv(tmp_path, "image,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv " + message):
        _load(path)


def test_quoted_cell_over_two_lines_keeps_line_numbers(tmp_path):
    rows = _rows().splitlines()
    rows[2] = 'imgs/2.png,"a"'
    text = "image,label,caption\n" + "".join(f'{r},"two\nlines"\n' for r in rows[:3]) + "imgs/3.png,a\n"
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=r"labels\.csv line 8: 2 cells"):  # 3 rows of 2 lines, then line 8
        _load(path)


def test_image_listed_twice_is_named(tmp_path):
    path = _csv(tmp_path, "image,label\n" + _rows() + "./imgs/3.png,a\n")
    with pytest.raises(DataError, match=r"3\.png is listed twice, labels\.csv line 5 and labels\.csv line 14 "
                                        r"\(it would be counted twice\)"):
        _load(path)


def test_image_in_two_splits_is_a_leak(tmp_path):
    rows = "".join(f"imgs/{i}.png,{'ab'[i % 2]},{'train' if i < 8 else 'test'}\n" for i in range(12))
    path = _csv(tmp_path, "image,label,split\n" + rows + "imgs/1.png,b,test\n")
    with pytest.raises(DataError, match=r"listed twice, labels\.csv line 3 and labels\.csv line 14 \(in split "
                                        r"'train' and in split 'test': evaluation would test on an image"):
        _load(path)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = _csv(tmp_path, "image,label\n" + _rows(), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    d = _load(path)
    assert d.schema.groups[0].classes == ("a", "b") and len(d.train) + len(d.val) + len(d.test) == 12


def test_non_utf8_manifest_names_line_and_column(tmp_path):
    path = _csv(tmp_path, "image,label\n" + _rows(label=lambda i: "café" if i < 8 else "b"), encoding="latin-1")
    with pytest.raises(DataError, match=r"labels\.csv line 2, column 15: byte 0xe9 is not UTF-8 text; the manifest "
                                        r"must be UTF-8\. Re-save it as UTF-8 \(e\.g\. `iconv"):
        _load(path)


def test_non_utf8_jsonl_and_repeated_json_key(tmp_path):
    _images(tmp_path / "imgs")
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b'{"image": "imgs/0.png", "label": "a"}\n{"image": "imgs/1.png", "label": "\xe9"}\n')
    with pytest.raises(DataError, match=r"labels\.jsonl line 2, column 35: byte 0xe9 is not UTF-8"):
        _load(path)
    path.write_text('{"image": "imgs/0.png", "label": "a", "label": "b"}\n')
    with pytest.raises(DataError, match=r"labels\.jsonl line 1: key\(s\) \['label'\] appear twice"):
        _load(path)


def test_missing_column_names_the_columns_found(tmp_path):
    path = _csv(tmp_path, "image;label\n" + _rows().replace(",", ";"))
    with pytest.raises(DataError, match=r"no column 'image' \(data\.image_column\), 'label' \(data\.label_columns\); "
                                        r"its columns are \['image;label'\] \(is the file separated by ';'"):
        _load(path)


# ------------------------------------------------------------------------------------------ labels
def test_unknown_label_without_declared_classes_names_label_and_line(tmp_path):
    path = _csv(tmp_path, "image,label\n" + _rows(label=lambda i: "zebar" if i == 6 else "ab"[i % 2]))
    with pytest.raises(DataError, match=r"'zebar': 1 \(labels\.csv line 8\).*typo: fix its line"):
        _load(path)


def test_typo_label_only_in_test_split_names_its_line(tmp_path):
    rows = "".join(f"imgs/{i}.png,{'ab'[i % 2] if i != 10 else 'c'},{'train' if i < 8 else 'test'}\n"
                   for i in range(12))
    path = _csv(tmp_path, "image,label,split\n" + rows)
    with pytest.raises(DataError, match=r"\(train split\): class\(es\) \['c'\] .*Found only in other splits: 'c' "
                                        r"\(labels\.csv line 12\)"):
        _load(path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    splits = {"train": shapes.make_split(60, 0, long_tailed=False), "val": shapes.make_split(12, 1, long_tailed=False),
              "test": shapes.make_split(12, 2, long_tailed=False)}
    root = shapes.write_attribute_layout(tmp_path_factory.mktemp("attrs"), splits)
    (root / "split" / "classes.yaml").unlink()
    return root


def _edit(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_short_first_attribute_line_is_blamed_on_line_1(layout, tmp_path):
    root = shutil.copytree(layout, tmp_path / "a")
    _edit(root / "split" / "train_attr.txt", 1, "1 0 2 1 0")
    with pytest.raises(DataError, match=r"train_attr\.txt line 1: expected 6 integers .*got 5"):
        load_source("deepfashion-attributes", root=root)


def test_out_of_range_index_without_class_names_names_index_and_line(layout, tmp_path):
    root = shutil.copytree(layout, tmp_path / "a")
    _edit(root / "split" / "test_attr.txt", 3, "99 0 0 0 0 0")
    with pytest.raises(DataError) as e:
        load_source("deepfashion-attributes", root=root)
    msg = str(e.value)
    assert re.search(r"test_attr\.txt line 3: index 99 for group 'attr1' makes classes 0\.\.99, but 93 of them have "
                     r"no training image \(7, 8, 9, 10, 11, 12, 13, 14, \.\.\.\)\. If 99 is a typo, fix that line", msg)
    assert len(msg) < 400


def test_non_utf8_attribute_file_names_line(layout, tmp_path):
    root = shutil.copytree(layout, tmp_path / "a")
    with open(root / "split" / "val.txt", "ab") as f:
        f.write(b"img/val/caf\xe9.png\n")
    with pytest.raises(DataError, match=r"val\.txt line 13, column 12: byte 0xe9 is not UTF-8 text; the image list"):
        load_source("deepfashion-attributes", root=root)


def test_same_image_in_train_and_test_lists_is_a_leak(layout, tmp_path):
    root = shutil.copytree(layout, tmp_path / "a")
    _edit(root / "split" / "test.txt", 2, "img/train/0000.png")
    with pytest.raises(DataError, match=r"0000\.png is listed twice, train\.txt line 1 and test\.txt line 2 "
                                        r"\(in split 'train' and in split 'test'"):
        load_source("deepfashion-attributes", root=root)


# ------------------------------------------------------------------------------------------ image files
def test_fifo_and_folder_in_manifest_are_named_not_waited_on(tmp_path):
    path = _csv(tmp_path, "image,label\n" + _rows(14).replace("imgs/12.png,b", "imgs/fifo,b")
                .replace("imgs/13.png,b", "imgs/sub,b"))
    os.mkfifo(tmp_path / "imgs" / "fifo")
    (tmp_path / "imgs" / "sub").mkdir()
    with pytest.raises(DataError, match=r"fifo \(labels\.csv line 14\): a FIFO \(named pipe\), not a regular image"):
        _load(path)
    d = _load(path, on_bad_image="skip")
    assert len(d.train.skipped) == 2 and "a folder, not an image file" in d.train.skipped[1]
    assert len(d.train) + len(d.val) + len(d.test) == 12


def test_broken_symlink_is_named(image_tree):
    root = image_tree()
    (root / "cat" / "gone.png").symlink_to(root / "nowhere.png")
    with pytest.raises(DataError, match=r"gone\.png \(class folder 'cat'\): broken symbolic link \(it points to "
                                        r".*nowhere\.png, which does not exist\)"):
        load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)


def test_symlink_out_of_the_data_root_is_read_under_its_own_name(image_tree, tmp_path):
    """Symbolic links are followed (datasets are often folders of links to a shared store); the image id is the
    link's path inside the root, and the file must be a regular image (a link to a FIFO or device is refused)."""
    root = image_tree()
    outside = tmp_path / "shared"
    _images(outside, 1)
    (root / "cat" / "linked.png").symlink_to(outside / "0.png")
    d = load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)
    ids = d.train.ids + d.val.ids + d.test.ids
    assert "cat/linked.png" in ids
    (root / "dog" / "dev.png").symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"dev\.png \(class folder 'dog'\): a device or socket, not a regular image"):
        load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)


def test_decompression_bomb_is_named_or_skipped(image_tree, monkeypatch):
    root = image_tree()
    Image.new("L", (200, 200)).save(root / "dog" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200×200 = 4 × the limit: refused as 20000² would be
    with pytest.raises(DataError, match=r"huge\.png \(class folder 'dog'\): too many pixels .*decompression bomb"):
        load_source("imagefolder", root=root, test_per_class=2, val_per_class=1)
    d = load_source("imagefolder", root=root, test_per_class=2, val_per_class=1, on_bad_image="skip")
    assert len(d.train.skipped) == 1 and "huge.png" in d.train.skipped[0]


def test_cmyk_16bit_alpha_palette_and_exif_rotation_are_converted(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    assert np.abs(np.asarray(open_image(cmyk, "RGB"))[0, 0].astype(int) - [255, 0, 0]).max() < 8
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(deep)  # 16-bit mid grey
    assert Image.open(deep).mode.startswith("I")
    assert np.asarray(open_image(deep, "L")).tolist() == [[127] * 4] * 4  # convert() alone clips to 255
    rgba = tmp_path / "rgba.png"
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[:2] = [0, 0, 255, 255]  # top half opaque blue, bottom half fully transparent (black underneath)
    Image.fromarray(arr, "RGBA").save(rgba)
    out = np.asarray(open_image(rgba, "RGB"))
    assert out[0, 0].tolist() == [0, 0, 255] and out[3, 0].tolist() == [255, 255, 255]
    palette = tmp_path / "palette.png"
    Image.fromarray(arr, "RGBA").convert("P").save(palette, transparency=0)
    assert Image.open(palette).mode == "P"
    assert np.asarray(open_image(palette, "RGB")).shape == (4, 4, 3)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (8, 4)).save(rotated, exif=exif)
    assert open_image(rotated, "RGB").size == (4, 8)


def test_class_names_with_slash_and_unicode(tmp_path):
    _images(tmp_path / "imgs")
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n" + _rows(label=lambda i: "T-shirt/top" if i < 6 else "mönch 🐧"), encoding="utf-8")
    d = _load(path)
    assert d.schema.groups[0].classes == ("T-shirt/top", "mönch 🐧")


@pytest.mark.parametrize("text, message", [
    ("image,label\n", r"labels\.csv has no rows"),
    ("", r"labels\.csv is empty; expected a header line"),
    ("image,label\n" + _rows(label=lambda i: "a"), r"label group 'label' has a single class \['a'\]; a classifier "
                                                   r"needs at least two classes"),
])
def test_empty_dataset_and_single_class(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        _load(_csv(tmp_path, text))


def test_every_image_bad_under_skip_is_an_error(tmp_path):
    path = _csv(tmp_path, "image,label\n" + "".join(f"imgs/missing{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    with pytest.raises(DataError, match=r"every image was skipped as bad \(4\)"):
        _load(path, on_bad_image="skip")


# ------------------------------------------------------------------------------------------ runs
def _config(tmp_path, root, **extra):
    import yaml

    config = {"name": "bad", "output_dir": str(tmp_path / "runs"), "progress": False,
              "data": {"source": "imagefolder", "root": str(root), "test_per_class": 2, "val_per_class": 1},
              "generator": {"name": "test-noise", "params": {"size": 16}},
              "plan": {"strategy": "fixed", "counts": {"owl": 2}}, **extra}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_replaced_image_file_is_a_changed_dataset(image_tree, tmp_path, caplog):
    from noise_generator import NoiseGenerator  # noqa: F401  (registers "test-noise")
    from synthaug.config import load_config
    from synthaug.errors import StageMismatch
    from synthaug.runner import open_run
    from synthaug.runner.data import data_stage
    from synthaug.runner.generate import fit_generator

    root = image_tree()
    path = _config(tmp_path, root)
    fit_generator(open_run(load_config(path)))
    run = tmp_path / "runs" / "bad"
    first = (run / "data" / "done.json").read_text()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "dog" / "003.png")  # same name, other pixels
    again = open_run(load_config(path))
    with pytest.raises(StageMismatch, match=r"Stage generator .* \(data changed\)"):
        fit_generator(again)
    data_stage(again)  # the data stage itself is redone, the old folder deleted once the new one is complete
    assert (run / "data" / "done.json").read_text() != first
    assert not any(p.name.startswith("data.stale-") for p in run.iterdir())


def test_stats_command_validates_the_plan_before_writing(image_tree, tmp_path, capsys):
    from noise_generator import NoiseGenerator  # noqa: F401  (registers "test-noise": the test passes alone too)
    from synthaug.cli import main

    path = _config(tmp_path, image_tree(), plan={"strategy": "fixed", "counts": {"emu": 3}})
    assert main(["stats", str(path)]) == 2
    assert "plan.counts names class(es) ['emu'] that the data does not have; its classes are ['cat', 'dog', " \
           "'owl']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ diffusers pipelines
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tiny_sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipeline")


def _load_pipeline(folder, pipeline="auto"):
    import torch

    from synthaug.generators.sd_common import load_pipeline

    return load_pipeline(str(folder), device=torch.device("cpu"), pipeline=pipeline)


def _broken_copy(src, tmp_path, break_it):
    folder = shutil.copytree(src, tmp_path / "pipeline")
    break_it(folder)
    return folder


@pytest.mark.parametrize("break_it, error, message", [
    (lambda f: shutil.rmtree(f / "vae"), FileNotFoundError,
     r"the pipeline folder .*pipeline has no vae/ sub-folder, but its model_index\.json lists the component 'vae' "
     r"\(AutoencoderKL\)\. Copy the whole pipeline folder again"),
    (lambda f: shutil.rmtree(f / "tokenizer"), FileNotFoundError,  # diffusers would load tokenizer=None
     r"has no tokenizer/ sub-folder, but its model_index\.json lists the component 'tokenizer'"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").rename(f / "unet" / "diffusion_pytorch_model.bin"),
     ValueError, r"component unet/ holds only pickle weights \['diffusion_pytorch_model\.bin'\], which synthaug does "
                 r"not load"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),
     FileNotFoundError, r"diffusion_pytorch_model\.safetensors.*A weights file is damaged or not in safetensors format"),
])
def test_broken_pipeline_folder_names_the_component(tiny_sd, tmp_path, break_it, error, message):
    folder = _broken_copy(tiny_sd, tmp_path, break_it)
    with pytest.raises(error, match=message):
        _load_pipeline(folder)


def test_truncated_safetensors_in_pipeline_is_named(tiny_sd, tmp_path):
    def truncate(folder):
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(FileNotFoundError, match=r"unet/diffusion_pytorch_model\.safetensors.*damaged"):
        _load_pipeline(_broken_copy(tiny_sd, tmp_path, truncate))


def test_offline_hub_id_error_does_not_advise_what_is_set(monkeypatch):
    import torch
    from huggingface_hub import constants

    from synthaug.generators.sd_common import load_pipeline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as e:
        load_pipeline("synthaug-tests/not-a-model", device=torch.device("cpu"))
    msg = str(e.value)
    assert "since HF_HUB_OFFLINE=1 is set, only the local Hugging Face cache" in msg and "no hub look-up" in msg
    assert "set HF_HUB_OFFLINE" not in msg and "then on the Hub" not in msg
    assert "hf download synthaug-tests/not-a-model" in msg


def test_unclip_wrong_path_suggests_an_unclip_checkpoint(tmp_path):
    from synthaug.generators.sd_common import resolve_checkpoint

    with pytest.raises(FileNotFoundError) as e:
        resolve_checkpoint(str(tmp_path / "nope"), pipeline="StableUnCLIPImg2ImgPipeline")
    msg = str(e.value)
    assert "stable-diffusion-v1-5" not in msg and "'stabilityai/stable-diffusion-2-1-unclip-small'" in msg
    assert "image_encoder/, image_noising_scheduler/, image_normalizer/" in msg


def test_unclip_pipeline_without_image_encoder_is_named(tmp_path):
    from tiny_unclip import build_tiny_unclip_pipeline

    folder = build_tiny_unclip_pipeline(tmp_path / "unclip")
    shutil.rmtree(folder / "image_encoder")
    with pytest.raises(FileNotFoundError, match=r"has no image_encoder/ sub-folder, but its model_index\.json lists "
                                                r"the component 'image_encoder' \(CLIPVisionModelWithProjection\)"):
        _load_pipeline(folder, "StableUnCLIPImg2ImgPipeline")


# ------------------------------------------------------------------------------------------ checkpoint files
class _Payload:  # a pickle that would run code if unpickled without weights_only
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickle_bomb(path):
    import torch

    torch.save({"state": _Payload()}, path)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(8, path.stat().st_size // 3)])


@pytest.fixture(scope="module")
def ddpm_model(tmp_path_factory):
    from synthaug.generators import create_generator

    digits = load_source("digits").train
    workdir = tmp_path_factory.mktemp("ddpm")
    g = create_generator("ddpm", {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                                  "batch_size": 8, "train_steps": 1, "precision": "fp32"}, digits.schema,
                         workdir=workdir)
    g.fit(digits)
    return workdir / "model", digits.schema


@pytest.mark.parametrize("break_it, message", [
    (lambda m: (m / "unet" / "diffusion_pytorch_model.safetensors").unlink()
     or _pickle_bomb(m / "unet" / "diffusion_pytorch_model.bin"),
     r"unet: cannot be read as a checkpoint \(OSError: .*diffusion_pytorch_model\.safetensors"),
    (lambda m: _truncate(m / "unet" / "diffusion_pytorch_model.safetensors"), r"unet: cannot be read as a checkpoint"),
    (lambda m: (m / "synthaug.json").write_text('{"generator": "ddpm", '), r"synthaug\.json: cannot be read as a "
                                                                            r"checkpoint \(JSONDecodeError"),
])
def test_damaged_or_pickled_ddpm_checkpoint_is_named(ddpm_model, tmp_path, break_it, message):
    from synthaug.generators import create_generator
    from synthaug.train.checkpoint import CheckpointError

    model, schema = ddpm_model
    broken = shutil.copytree(model, tmp_path / "model")
    break_it(broken)
    g = create_generator("ddpm", {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                                  "checkpoint": str(broken), "precision": "fp32"}, schema, workdir=tmp_path / "w")
    with pytest.raises(CheckpointError, match=message) as e:
        g.check_loadable()
    assert str(broken) in str(e.value) and "unset generator.params.checkpoint" in str(e.value)


@pytest.mark.parametrize("break_it, message", [
    (_pickle_bomb, r"cannot be read as a checkpoint \(UnpicklingError: Weights only load failed"),
    (_truncate, r"cannot be read as a checkpoint"),
])
def test_rejected_resume_state_is_named_with_the_fix(tmp_path, capfd, break_it, message):
    import torch

    from synthaug.train.checkpoint import CheckpointError, StepCheckpoints

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    ckpts = StepCheckpoints(tmp_path / "checkpoints")
    last = ckpts.save(4, lambda folder: None, opt, sched)
    break_it(last / "optimizer.pt")
    with pytest.raises(CheckpointError, match=message) as e:
        ckpts.restore(opt, sched)
    assert f"{last}: cannot be read" in str(e.value) and f"delete {last} to resume from the checkpoint before" in \
        str(e.value)
    assert "pwned" not in capfd.readouterr().out  # the pickle was never run


def test_truncated_classifier_resume_checkpoint_is_named(tmp_path):
    import torch

    from synthaug.train.checkpoint import CheckpointError
    from synthaug.train import checkpoint

    model = torch.nn.Linear(2, 2)
    checkpoint.save(tmp_path / "ckpt", model, {"epoch": 1}, [])
    _truncate(tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"ckpt: cannot be read as a checkpoint \(SafetensorError.*delete .*ckpt "
                                              r"to train this arm from its first epoch"):
        checkpoint.load(tmp_path / "ckpt", torch.nn.Linear(2, 2))
    checkpoint.save(tmp_path / "ckpt", model, {"epoch": 1}, [])
    _pickle_bomb(tmp_path / "ckpt" / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"UnpicklingError"):
        checkpoint.load(tmp_path / "ckpt", torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    from synthaug.train import create_classifier
    from synthaug.train.config import ModelConfig
    from synthaug.train.models import save_classifier

    schema = load_source("digits").train.schema
    folder = tmp_path_factory.mktemp("classifier") / "model"
    model = create_classifier(ModelConfig(name="small-cnn"), schema, 1)
    save_classifier(model, ModelConfig(name="small-cnn"), schema, 1, 8, folder)
    return folder


def _fewer_classes(folder):
    import json

    meta = json.loads((folder / "classifier.json").read_text())
    meta["schema"] = {"digit": meta["schema"]["digit"][:5]}  # weights for 10 classes, a model for 5
    (folder / "classifier.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("break_it, error, message", [
    (lambda f: (f / "model.safetensors").unlink(), "MissingFileError", r"missing model\.safetensors"),
    (lambda f: _truncate(f / "model.safetensors"), "CheckpointError",
     r"model\.safetensors: cannot be read as a checkpoint \(SafetensorError"),
    (lambda f: _pickle_bomb(f / "model.safetensors"), "CheckpointError", r"model\.safetensors: cannot be read"),
    (lambda f: (f / "classifier.json").write_text('{"model": '), "CheckpointError",
     r"classifier\.json: cannot be read as a checkpoint \(JSONDecodeError"),
    (lambda f: (f / "classifier.json").write_text('{"model": {"name": "small-cnn"}, "schema": {"digit": ["0", "1"]}, '
                                                  '"in_chans": 1}'), "CheckpointError", r"\(KeyError: 'image_size'\)"),
    (_fewer_classes, "CheckpointError", r"model\.safetensors: cannot be read as a checkpoint \(RuntimeError: Error"
                                        r"\(s\) in loading state_dict for Classifier: size mismatch"),
])
def test_damaged_classifier_folder_is_named(saved_classifier, tmp_path, capfd, break_it, error, message):
    from synthaug.errors import UserError
    from synthaug.train.models import load_classifier

    broken = shutil.copytree(saved_classifier, tmp_path / "model")
    break_it(broken)
    with pytest.raises(UserError, match=message) as e:
        load_classifier(broken)
    assert type(e.value).__name__ == error and str(broken) in str(e.value)
    assert "pwned" not in capfd.readouterr().out
    load_classifier(saved_classifier)  # the intact folder still loads
