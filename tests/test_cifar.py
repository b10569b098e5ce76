"""CIFAR-10 / CIFAR-100 sources (issue 23): tiny archives and folders built here in the official layouts (Python 2
protocol-2 pickles with byte-string keys, binary records, the official member names), read without extraction."""

import hashlib
import io
import logging
import os
import pickle
import re
import struct
import tarfile

import numpy as np
import pytest
import yaml

from synthaug.data import DataError, load_source
from synthaug.data.longtail import cao2019_indices, training_subset_sha256
from synthaug.errors import SettingError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"superclass_{i:02d}" for i in range(20)]
PER_BATCH = 20  # CIFAR-10: 5 training batches of 20 (10 per class in all) and a test batch of 20


class Py2Pickler(pickle._Pickler):
    """Writes byte and text strings as Python 2's ``str`` (SHORT_BINSTRING / BINSTRING) and names
    ``numpy.core.multiarray``, as cPickle did for the official files."""

    dispatch = dict(pickle._Pickler.dispatch)  # noqa: RUF012  (pickle's own pattern)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_dumps(obj):
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def py3_dumps(obj):
    return pickle.dumps(obj, protocol=2)


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def cifar_files(source, version, dumps=py2_dumps):
    """(member name -> bytes, expected arrays) of one official version, small."""
    rng = np.random.default_rng(1)
    if source == "cifar10":
        train_labels = rng.permutation(np.repeat(np.arange(10), 5 * PER_BATCH // 10))
        test_labels = rng.integers(0, 10, PER_BATCH)
        batches = [(f"data_batch_{i + 1}", slice(i * PER_BATCH, (i + 1) * PER_BATCH)) for i in range(5)]
        train_pixels, test_pixels = _pixels(5 * PER_BATCH, 2), _pixels(PER_BATCH, 3)
        expected = {"train": (train_pixels, {"": train_labels}), "test": (test_pixels, {"": test_labels})}
        if version == "binary":
            files = {f"{name}.bin": _records(train_pixels[s], [train_labels[s]]) for name, s in batches}
            files["test_batch.bin"] = _records(test_pixels, [test_labels])
            files["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
            return files, expected
        files = {name: dumps({b"batch_label": b"training batch %d of 5" % (k + 1), b"labels": train_labels[s].tolist(),
                              b"data": train_pixels[s], b"filenames": [b"img_%d.png" % i for i in range(PER_BATCH)]})
                 for k, (name, s) in enumerate(batches)}
        files["test_batch"] = dumps({b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
                                     b"data": test_pixels, b"filenames": [b"t.png"] * PER_BATCH})
        files["batches.meta"] = dumps({b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072,
                                       b"label_names": [n.encode() for n in CIFAR10_NAMES]})
        return files, expected
    fine = {"train": rng.permutation(np.repeat(np.arange(100), 2)), "test": rng.integers(0, 100, 50)}
    expected = {split: (_pixels(len(f), 4 + k), {"fine_": f, "coarse_": f // 5}) for k, (split, f) in
                enumerate(fine.items())}
    if version == "binary":
        files = {f"{split}.bin": _records(p, [lab["coarse_"], lab["fine_"]]) for split, (p, lab) in expected.items()}
        files["fine_label_names.txt"] = "\n".join(FINE_NAMES).encode()
        files["coarse_label_names.txt"] = "\n".join(COARSE_NAMES).encode()
        return files, expected
    files = {split: dumps({b"filenames": [b"x.png"] * len(p), b"batch_label": split.encode(), b"data": p,
                           b"fine_labels": lab["fine_"].tolist(), b"coarse_labels": lab["coarse_"].tolist()})
             for split, (p, lab) in expected.items()}
    files["meta"] = dumps({b"fine_label_names": [n.encode() for n in FINE_NAMES],
                           b"coarse_label_names": [n.encode() for n in COARSE_NAMES]})
    return files, expected


def _records(pixels, label_columns):
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes()


FOLDERS = {("cifar10", "python"): ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
           ("cifar10", "binary"): ("cifar-10-batches-bin", "cifar-10-binary.tar.gz"),
           ("cifar100", "python"): ("cifar-100-python", "cifar-100-python.tar.gz"),
           ("cifar100", "binary"): ("cifar-100-binary", "cifar-100-binary.tar.gz")}


def write_archive(path, folder, files):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(_dir_info(folder))
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _dir_info(folder):
    info = tarfile.TarInfo(folder)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def write_folder(path, files):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def official(tmp_path, source="cifar10", version="python", archive=True, dumps=py2_dumps):
    """A data.root folder holding the tiny archive (or its extracted folder), and the expected arrays."""
    folder, archive_name = FOLDERS[(source, version)]
    files, expected = cifar_files(source, version, dumps)
    root = tmp_path / f"{source}-{version}"
    if archive:
        write_archive(root / archive_name, folder, files)
    else:
        write_folder(root / folder, files)
    return root, expected


def _as_images(flat):
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------ the files
def test_fixture_pickles_are_in_the_official_format():
    files, _ = cifar_files("cifar10", "python")
    batch = files["data_batch_1"]
    assert batch[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in batch
    assert b"U\x04data" in batch and b"_codecs" not in batch  # Python 2 str keys, as cPickle wrote them
    from_python3 = py3_dumps({b"data": np.zeros((1, 3072), np.uint8)})
    assert re.search(rb"cnumpy\.(_)?core\.multiarray\n_reconstruct\n", from_python3)


@pytest.mark.parametrize("dumps", [py2_dumps, py3_dumps], ids=["python2-pickles", "protocol2-from-python3"])
def test_tarball_is_read_in_place(tmp_path, dumps):
    root, expected = official(tmp_path, dumps=dumps)
    before = sorted(p.name for p in root.rglob("*"))
    d = load_source("cifar10", root=root)
    assert sorted(p.name for p in root.rglob("*")) == before == ["cifar-10-python.tar.gz"]
    pixels, labels = expected["train"]
    assert d.train.pixels.shape == (100, 32, 32, 3) and d.train.pixels.dtype == np.uint8 and d.train.mode == "RGB"
    np.testing.assert_array_equal(d.train.pixels, _as_images(pixels))
    # row-major R, then G, then B planes: pixel (y=1, x=2) of image 5
    assert d.train.pixels[5, 1, 2].tolist() == [pixels[5, 34], pixels[5, 1024 + 34], pixels[5, 2048 + 34]]
    np.testing.assert_array_equal(d.train.labels[:, 0], labels[""])
    np.testing.assert_array_equal(d.test.labels[:, 0], expected["test"][1][""])
    assert d.train.ids[:2] == ["cifar10:train:0", "cifar10:train:1"] and d.test.ids[-1] == "cifar10:test:19"
    assert d.schema.groups[0].classes == tuple(CIFAR10_NAMES)
    assert len(d.val) == 0 and d.val_per_class == 50


@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_binary_and_python_versions_agree(tmp_path, source):
    python = load_source(source, root=official(tmp_path, source, "python")[0])
    binary = load_source(source, root=official(tmp_path, source, "binary")[0])
    for split in ("train", "test"):
        a, b = getattr(python, split), getattr(binary, split)
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.ids == b.ids
    assert python.schema == binary.schema


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar100_fine_and_coarse_labels_and_names(tmp_path, version):
    root, expected = official(tmp_path, "cifar100", version)
    fine = load_source("cifar100", root=root)
    coarse = load_source("cifar100", root=root, label="coarse")
    assert fine.schema.groups[0].classes == tuple(FINE_NAMES)
    assert coarse.schema.groups[0].classes == tuple(COARSE_NAMES)
    np.testing.assert_array_equal(fine.train.labels[:, 0], expected["train"][1]["fine_"])
    np.testing.assert_array_equal(coarse.test.labels[:, 0], expected["test"][1]["coarse_"])
    np.testing.assert_array_equal(fine.test.pixels, _as_images(expected["test"][0]))
    assert fine.val_per_class == 10


def test_extracted_folder_and_archive_file_as_root(tmp_path):
    extracted, _ = official(tmp_path, archive=False)
    from_archive = load_source("cifar10", root=official(tmp_path / "a")[0])
    for root in (extracted, extracted / "cifar-10-batches-py"):
        d = load_source("cifar10", root=root)
        np.testing.assert_array_equal(d.train.pixels, from_archive.train.pixels)
    archive_file = official(tmp_path / "b")[0] / "cifar-10-python.tar.gz"
    np.testing.assert_array_equal(load_source("cifar10", root=archive_file).test.pixels, from_archive.test.pixels)


def test_md5_mismatch_is_a_warning_naming_both_sums(tmp_path, caplog):
    root, _ = official(tmp_path)
    got = hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="synthaug.data.cifar"):
        load_source("cifar10", root=root)
    assert got in caplog.text and "c58f30108f718f92721af3b95e74349a" in caplog.text


# ------------------------------------------------------------------------------------------ bad files
def test_truncated_archive_is_named(tmp_path):
    root, _ = official(tmp_path)
    archive = root / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 6 // 10])
    with pytest.raises(DataError, match=re.escape(str(archive)) + r".*truncated or corrupt.*Download"):
        load_source("cifar10", root=root)


def test_foreign_and_random_archives_are_named(tmp_path):
    cifar100, _ = official(tmp_path, "cifar100")
    with pytest.raises(DataError, match=r"is CIFAR-100 \(cifar-100-python\), but data.source is 'cifar10'; set "
                                        r"data.source: cifar100"):
        load_source("cifar10", root=cifar100)
    renamed = tmp_path / "x" / "cifar-10-python.tar.gz"
    (tmp_path / "x").mkdir()
    renamed.write_bytes((cifar100 / "cifar-100-python.tar.gz").read_bytes())
    with pytest.raises(DataError, match="is CIFAR-100"):
        load_source("cifar10", root=tmp_path / "x")
    random_tar = write_archive(tmp_path / "y" / "cifar-10-python.tar.gz", "photos", {"cat.txt": b"meow"})
    with pytest.raises(DataError, match=r"not a CIFAR-10 archive: its first member is 'photos'"):
        load_source("cifar10", root=random_tar)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "cifar-10-python.tar.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="not a readable tar archive"):
        load_source("cifar10", root=tmp_path / "z")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no CIFAR-10 files \(it has: nothing\)"):
        load_source("cifar10", root=tmp_path / "empty")


def test_missing_member_is_named(tmp_path):
    files, _ = cifar_files("cifar10", "python")
    del files["data_batch_3"]
    root = tmp_path / "root"
    write_archive(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(DataError, match=r"no member\(s\) \['cifar-10-batches-py/data_batch_3'\]"):
        load_source("cifar10", root=root)
    write_folder(tmp_path / "folder", files)
    with pytest.raises(DataError, match=r"no file\(s\) \['data_batch_3'\]"):
        load_source("cifar10", root=tmp_path / "folder")


def test_truncated_binary_batch_is_named(tmp_path):
    files, _ = cifar_files("cifar10", "binary")
    files["data_batch_2.bin"] = files["data_batch_2.bin"][:-100]
    folder = write_folder(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match=r"data_batch_2.bin: 61360 bytes is not a whole number of 3073-byte records"):
        load_source("cifar10", root=folder)


class Planted:
    """A class a poisoned pickle names: unpickling it would create the marker file."""

    def __setstate__(self, state):
        open(state, "w").close()


def _payloads(marker):
    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    class Custom:
        def __reduce__(self):
            return Planted, (), str(marker)

    return {"os.system": (System(), r"(posix|nt|os)\.system"),
            "builtins.eval": (Eval(), r"(__builtin__|builtins)\.eval"),
            "custom class": (Custom(), r"test_cifar\.Planted")}


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "custom class"])
def test_planted_pickle_payload_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj, global_name = _payloads(marker)[payload]
    files, _ = cifar_files("cifar10", "python")
    files["data_batch_2"] = pickle.dumps({b"labels": [0], b"data": obj}, protocol=2)
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_payloads(armed)[payload][0], protocol=2))  # the payload is real: plain pickle runs it
    assert armed.exists()
    root = tmp_path / "root"
    write_archive(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(DataError) as e:
        load_source("cifar10", root=root)
    assert re.search(r"cifar-10-python.tar.gz \(member cifar-10-batches-py/data_batch_2\): the pickle names the "
                     rf"global {global_name}, .*nothing of it ran", str(e.value)), str(e.value)
    assert not marker.exists()


def test_planted_payload_in_meta_of_an_extracted_folder(tmp_path):
    marker = tmp_path / "pwned"
    files, _ = cifar_files("cifar100", "python")
    files["meta"] = pickle.dumps({b"fine_label_names": _payloads(marker)["os.system"][0]}, protocol=2)
    folder = write_folder(tmp_path / "cifar-100-python", files)
    with pytest.raises(DataError, match=re.escape(str(folder / "meta")) + ": the pickle names the global"):
        load_source("cifar100", root=tmp_path)
    assert not marker.exists()


def test_options_cifar_does_not_read_are_refused():
    from synthaug.config import DataConfig

    with pytest.raises(ValueError, match="does not use data.test_per_class"):
        DataConfig(source="cifar10", root="x", test_per_class=10)
    with pytest.raises(ValueError, match="does not use data.label"):
        DataConfig(source="cifar10", root="x", label="coarse")
    with pytest.raises(SettingError, match="'fine' or 'coarse'"):
        load_source("cifar100", root="x", label="medium")


# ------------------------------------------------------------------------------------------ experiments
def _config(tmp_path, root, **data):
    config = {"name": "cifar", "output_dir": str(tmp_path / "runs"), "progress": False,
              "data": {"source": "cifar10", "root": str(root), **data}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cifar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _experiment(tmp_path, root, seed=0, **data):
    from synthaug.config import load_config
    from synthaug.runner import open_run

    return open_run(load_config(_config(tmp_path, root, **data), [f"seed={seed}"]))


def test_validation_is_carved_from_left_out_training_images(tmp_path):
    root, expected = official(tmp_path)
    exp = _experiment(tmp_path, root, longtail={"profile": "cao2019", "imbalance_ratio": 10}, val_per_class=2)
    splits = exp.splits
    kept = np.sort(cao2019_indices(expected["train"][1][""], 10, 10))
    assert splits.train.ids == [f"cifar10:train:{i}" for i in kept]
    assert all(i.startswith("cifar10:train:") for i in splits.val.ids)  # never a test image
    assert not set(splits.val.ids) & set(splits.train.ids)
    assert splits.val.class_counts().tolist() == [0] + [2] * 9  # the head class keeps all of its 10 images
    assert len(splits.test) == PER_BATCH
    assert set(exp.balanced_pool.ids) == {f"cifar10:train:{i}" for i in range(100)} - set(splits.val.ids)

    plain = _experiment(tmp_path / "plain", root, val_per_class=2).splits
    assert plain.val.class_counts().tolist() == [2] * 10 and len(plain.train) == 80
    assert not set(plain.val.ids) & set(plain.train.ids)


def test_fewshot_is_the_same_for_every_seed_and_differs_per_draw(tmp_path):
    root, _ = official(tmp_path)
    a = _experiment(tmp_path / "a", root, seed=0, val_per_class=1, fewshot={"shots": 3, "draw": 0}).splits
    b = _experiment(tmp_path / "b", root, seed=5, val_per_class=1, fewshot={"shots": 3, "draw": 0}).splits
    c = _experiment(tmp_path / "c", root, seed=0, val_per_class=1, fewshot={"shots": 3, "draw": 1}).splits
    assert a.train.class_counts().tolist() == [3] * 10
    assert a.train.ids == b.train.ids and a.train.ids != c.train.ids
    assert a.val.ids == c.val.ids and not set(a.val.ids) & set(a.train.ids)
    short = _experiment(tmp_path / "d", root, longtail={"profile": "cao2019", "imbalance_ratio": 10},
                        fewshot={"shots": 5})
    with pytest.raises(SettingError, match=r"data.fewshot.shots is 5, but class\(es\) 'cat' \(4\), .*'truck' \(1\) "
                                           "have fewer"):
        _ = short.splits


def test_stats_prints_the_training_subset_sha256(tmp_path, capsys):
    from synthaug.cli import main

    root, expected = official(tmp_path)
    path = _config(tmp_path, root, longtail={"profile": "cao2019", "imbalance_ratio": 10}, val_per_class=2)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("training subset sha256: ")]
    assert len(lines) == 1 and re.fullmatch(r"training subset sha256: [0-9a-f]{64}", lines[0])
    kept = cao2019_indices(expected["train"][1][""], 10, 10)
    text = "".join(f"{i}\n" for i in sorted(kept))
    assert lines[0].split(": ")[1] == hashlib.sha256(text.encode()).hexdigest() == training_subset_sha256(kept)
    assert main(["stats", str(path)]) == 0  # the splits read back from data/splits.json: the same subset
    assert lines[0] in capsys.readouterr().out.splitlines()
