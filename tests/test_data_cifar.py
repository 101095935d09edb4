"""CIFAR pickle batches: exact read-back of files written like the published (Python 2 cPickle) ones, and
a restricted unpickler that refuses code."""

import io
import os
import pickle

import numpy as np
import pytest
import torch

from spiketwin.data.cifar import cifar_classes, load_cifar10, load_cifar100, safe_unpickle

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct


class Py2Pickler(pickle._Pickler):
    """Writes protocol 2 the way Python 2's cPickle did for the CIFAR files: ``str`` as SHORT_BINSTRING /
    BINSTRING (no ``_codecs.encode``) and numpy's reconstruct under its old module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_py2_pickle(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def make_cifar10(root, n_per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        write_py2_pickle(folder / name, {b"batch_label": b"batch", b"labels": labels, b"data": data,
                                         b"filenames": [b"img_%d.png" % i for i in range(n_per_batch)]})
        written[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": n_per_batch, b"label_names": names,
                                                b"num_vis": 3072})
    return folder, written


def test_writer_emits_python2_opcodes(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    raw = (folder / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"U\x04data" in raw
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw


def test_cifar10_reads_back_exactly(tmp_path):
    folder, written = make_cifar10(tmp_path)
    x, y = load_cifar10(tmp_path, "train")
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    # channel layout: first 1024 bytes are red, row-major
    assert x[0, 0, 0, 1] * 255 == pytest.approx(float(data[0, 1])) and x[0, 1, 0, 0] * 255 == float(data[0, 1024])
    assert y.tolist() == labels
    xt, yt = load_cifar10(folder, "test")  # the extracted folder itself also works as root
    assert yt.tolist() == written["test_batch"][1]
    assert cifar_classes(tmp_path)[:2] == ["airplane", "automobile"]


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        write_py2_pickle(folder / name, {b"filenames": [b"a"] * 4, b"batch_label": b"x", b"fine_labels": [0, 99, 5, 7],
                                         b"coarse_labels": [0, 19, 3, 4], b"data": data})
    write_py2_pickle(folder / "meta", {b"fine_label_names": [b"apple"] + [b"c%d" % i for i in range(99)],
                                       b"coarse_label_names": [b"aquatic_mammals"] + [b"s"] * 19})
    x, y = load_cifar100(tmp_path, "test")
    assert y.tolist() == [0, 99, 5, 7] and x.shape == (4, 3, 32, 32)
    assert load_cifar100(tmp_path, "train", labels="coarse")[1].tolist() == [0, 19, 3, 4]
    assert cifar_classes(tmp_path, "cifar100")[0] == "apple"
    assert cifar_classes(tmp_path, "cifar100", labels="coarse")[0] == "aquatic_mammals"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_never_runs_code(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1.*refusing to load global (posix|os|nt)\.system"):
        safe_unpickle(path)


def test_missing_truncated_and_malformed_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    folder, _ = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="test_batch is not a readable pickle"):
        load_cifar10(tmp_path, "test")
    write_py2_pickle(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch: field 'data' is uint8 \(2, 100\)"):
        load_cifar10(tmp_path, "test")
    write_py2_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(ValueError, match="test_batch: field 'labels'"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be"):
        load_cifar10(tmp_path, "val")
