"""get_dataset: every name resolves to the right loader and split, bad names and missing roots are explained."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_cifar import make_cifar10
from test_data_events import make_cifar10_dvs, make_gesture

from spiketwin.data import TensorData, available_datasets, get_dataset

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def test_names_and_errors():
    assert available_datasets() == ["cifar10", "cifar100", "cifar10_dvs", "digits", "dvs_gesture", "imagefolder",
                                    "mnist", "sst2"]
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; available: cifar10, cifar100"):
        get_dataset("imagenet", "/data")
    with pytest.raises(ValueError, match=r"get_dataset\('cifar10'\) reads local files: pass root="):
        get_dataset("cifar10")
    with pytest.raises(ValueError, match="split must be one of"):
        get_dataset("digits", split="val")


def test_digits_tensors():
    train, test = get_dataset("digits"), get_dataset("digits", split="test")
    assert isinstance(train, TensorData) and len(train) + len(test) == 1797
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and train.classes[3] == "3" and train[0][0].shape == (1, 8, 8)


def test_mnist_splits_of_the_real_copy():
    if not MNIST.is_dir():
        pytest.skip(f"real MNIST copy not found at {MNIST}")
    train, test = get_dataset("mnist", MNIST, "t10k-train"), get_dataset("mnist", MNIST, "t10k-test")
    assert len(train) == 8000 and len(test) == 2000
    assert torch.equal(get_dataset("mnist", MNIST, "test").tensors[1][8000:], test.tensors[1])
    assert len(get_dataset("mnist", MNIST, "t10k-train", n_train=9000)) == 9000


def test_file_data_sets_by_name(tmp_path):
    _, written = make_cifar10(tmp_path / "c10")
    test = get_dataset("cifar10", tmp_path / "c10", "test")
    assert test.tensors[1].tolist() == written["test_batch"][1] and test.classes[9] == "truck"
    rng = np.random.default_rng(0)
    make_gesture(tmp_path / "g", rng)
    gesture = get_dataset("dvs_gesture", tmp_path / "g", "test", frames=5, cache_dir=tmp_path / "cache")
    assert gesture[0][0].shape == (5, 2, 128, 128) and gesture.targets == [2]
    make_cifar10_dvs(tmp_path / "dvs", rng, per_class=2)
    dvs = get_dataset("cifar10_dvs", tmp_path / "dvs", "test", frames=2, train_fraction=0.5,
                      cache_dir=tmp_path / "cache")
    assert len(dvs) == 10 and dvs.targets == list(range(10))
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "imgs" / "val" / "n01").mkdir(parents=True)
    image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "imgs" / "val" / "n01" / "a.png")
    assert get_dataset("imagefolder", tmp_path / "imgs", "val", size=8)[0][0].shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match=r"no folder .*imgs/train"):
        get_dataset("imagefolder", tmp_path / "imgs", "train")


def test_limit_takes_a_seeded_class_balanced_subset(tmp_path, monkeypatch):
    from spiketwin.data import train_test
    from spiketwin.data.registry import balanced_subset

    labels = [0] * 50 + [1] * 30 + [2] * 3  # sorted by class, one class small
    picked = balanced_subset(labels, 20)
    counts = np.bincount(np.asarray(labels)[picked], minlength=3)
    assert len(set(picked)) == 20 and counts[2] == 3 and abs(int(counts[0]) - int(counts[1])) <= 1
    assert balanced_subset(labels, 20) == picked and balanced_subset(labels, 20, seed=1) != picked
    assert balanced_subset(labels, 7) != list(range(7))  # not the first samples
    monkeypatch.setenv("SPIKETWIN_CACHE", str(tmp_path / "cache"))
    make_cifar10_dvs(tmp_path / "c10dvs", np.random.default_rng(0), per_class=4)  # files sorted by class
    train, test = train_test("cifar10_dvs", tmp_path / "c10dvs", limit=20, frames=2)
    assert len(train) == 20 and np.bincount(train.targets, minlength=10).tolist() == [2] * 10
    assert [train[i][1] for i in range(3)] == train.targets[:3]
    train, _ = train_test("digits", limit=30)
    assert np.bincount(train.tensors[1].numpy(), minlength=10).tolist() == [3] * 10
