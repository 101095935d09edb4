"""Data readers (bundled digits, MNIST IDX) and the training loop."""

import gzip
import struct

import pytest
import torch
from torch import nn

from spiketwin.data import load_digits, load_mnist, mnist_split
from spiketwin.train import TrainConfig, cosine_with_warmup, evaluate, fit


def write_idx(path, array, magic):
    dims = array.shape
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims))
        f.write(bytes(array.flatten().tolist()))


def test_digits_split_is_fixed_and_scaled():
    x, y, xt, yt = load_digits()
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xt) == 1797
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(load_digits()[3], yt)


def test_mnist_reads_idx_and_names_bad_files(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.tensor([1, 2, 3, 4, 5], dtype=torch.uint8), 2049)
    x, y = load_mnist(tmp_path)
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), images)
    assert y.tolist() == [1, 2, 3, 4, 5]
    xs = mnist_split(tmp_path, n_train=3)
    assert len(xs[0]) == 3 and len(xs[2]) == 2
    raw = gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is truncated"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path / "missing")


def test_real_mnist_copy_when_present():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
    if not root.is_dir():
        pytest.skip(f"real MNIST copy not found at {root}")
    x, y = load_mnist(root)
    assert x.shape == (10000, 1, 28, 28) and set(y.tolist()) == set(range(10))


def test_schedule_warms_up_then_decays():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)


def test_fit_learns_digits():
    x, y, xt, yt = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    before = evaluate(model, xt, yt)
    history = fit(model, x, y, TrainConfig(epochs=5, lr=3e-3, progress=False), eval_data=(xt, yt))
    assert history[-1]["accuracy"] > 0.9 > before
    assert history[-1]["loss"] < history[0]["loss"]
