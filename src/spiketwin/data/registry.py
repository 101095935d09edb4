"""``get_dataset(name, root, split, **kw)``: one entry point to every data set, by name.

In-memory data sets (digits, MNIST, CIFAR) come back as :class:`TensorData` (a ``TensorDataset`` whose
``tensors`` are ``(x, y)``, plus ``classes``); file-streamed ones (image folders, event data) as their own
``Dataset`` (also with ``classes``); tokenized text (SST-2) as :class:`~.text.TextData` (``tensors`` are
``({"input_ids", "attention_mask"}, y)``). Items are ``(x, label)`` in every case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from .cifar import cifar_classes, load_cifar10, load_cifar100
from .digits import load_digits
from .events import CIFAR10DVS, DVSGesture
from .folder import ImageFolder
from .mnist import load_mnist, mnist_split
from .text import TextData, sst2


class TensorData(TensorDataset):
    """``TensorDataset(x, y)`` that names its classes: ``x`` ``[N, C, H, W]`` float, ``y`` ``[N]`` int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: list[str]):
        super().__init__(x, y)
        self.classes = list(classes)


def _root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"get_dataset({name!r}) reads local files: pass root=<folder holding them> "
                         f"(see docs/data.md for the expected layout)")
    return Path(root).expanduser()


def _split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"get_dataset({name!r}): split must be one of {allowed}, got {split!r}")


def _digits(root, split, test_fraction: float = 0.2, seed: int = 0):
    _split("digits", split, ("train", "test"))
    x, y, xt, yt = load_digits(test_fraction, seed)
    return TensorData(*((x, y) if split == "train" else (xt, yt)), [str(i) for i in range(10)])


def _mnist(root, split, n_train: int = 8000):
    """Official files ("train", "test" = t10k), or the t10k file cut by index at ``n_train``
    ("t10k-train" / "t10k-test"), the split the project's MNIST benchmarks use."""
    _split("mnist", split, ("train", "test", "t10k-train", "t10k-test"))
    root = _root("mnist", root)
    if split in ("train", "test"):
        x, y = load_mnist(root, "train" if split == "train" else "t10k")
    else:
        x, y, xt, yt = mnist_split(root, n_train)
        x, y = (x, y) if split == "t10k-train" else (xt, yt)
    return TensorData(x, y, [str(i) for i in range(10)])


def _names(root: Path, dataset: str, count: int, labels: str = "fine") -> list[str]:
    """Class names from the meta file when it is there; numbers otherwise (the batches suffice to train)."""
    try:
        return cifar_classes(root, dataset, labels)
    except FileNotFoundError:
        return [str(i) for i in range(count)]


def _cifar10(root, split):
    root = _root("cifar10", root)
    x, y = load_cifar10(root, split)
    return TensorData(x, y, _names(root, "cifar10", 10))


def _cifar100(root, split, labels: str = "fine"):
    root = _root("cifar100", root)
    x, y = load_cifar100(root, split, labels)
    return TensorData(x, y, _names(root, "cifar100", 100 if labels == "fine" else 20, labels))


def _imagefolder(root, split, **kw):
    """``root/<split>/<class>/<image>`` (ImageNet's ``train``/``val`` layout), or ``root/<class>/...`` with
    ``split=None``."""
    root = _root("imagefolder", root)
    folder = root if split is None else root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"get_dataset('imagefolder'): no folder {folder} (pass split=None to use {root} "
                                f"itself)")
    return ImageFolder(folder, **kw)


def _sst2(root, split, tokenizer=None, max_length: int = 64):
    return sst2(_root("sst2", root), split, tokenizer, max_length)


def _dvs_gesture(root, split, **kw):
    return DVSGesture(_root("dvs_gesture", root), split, **kw)


def _cifar10_dvs(root, split, **kw):
    return CIFAR10DVS(_root("cifar10_dvs", root), split, **kw)


_DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagefolder": _imagefolder,
    "dvs_gesture": _dvs_gesture,
    "cifar10_dvs": _cifar10_dvs,
    "sst2": _sst2,
}


def available_datasets() -> list[str]:
    """Names that :func:`get_dataset` accepts."""
    return sorted(_DATASETS)


def get_dataset(name: str, root: str | Path | None = None, split: str | None = "train", **kw) -> Dataset:
    """Load data set ``name`` from the files under ``root`` (``digits`` needs none).

    ``split``: ``"train"`` / ``"test"`` everywhere, plus ``"t10k-train"`` / ``"t10k-test"`` for MNIST,
    ``"all"`` for CIFAR10-DVS, any sub-folder (e.g. ``"val"``) or None for image folders. ``kw`` go to the
    loader: ``n_train`` (mnist), ``labels`` (cifar100), ``size``/``resize``/``transform`` (imagefolder),
    ``frames``/``cache_dir``/``transform`` (event data), ``train_fraction``/``orientation`` (cifar10_dvs),
    ``tokenizer``/``max_length`` (sst2: ``train.tsv`` and ``dev.tsv``, the test split; :class:`~.text.TextData`).
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")
    return _DATASETS[name](root, split, **kw)


#: The (train, test) splits :func:`train_test` reads: MNIST uses the project's cut of the t10k file (the shared
#: copy has only t10k), image folders ImageNet's ``train`` / ``val`` sub-folders.
_TRAIN_TEST = {"mnist": ("t10k-train", "t10k-test"), "imagefolder": ("train", "val")}


def balanced_subset(labels: torch.Tensor | list[int], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` samples spread evenly over the classes in ``labels``: each class's samples in a seeded
    random order, taken one class at a time in turn (a class with fewer samples gives what it has); sorted.
    The same ``labels``, ``n`` and ``seed`` always give the same subset."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    pools = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    pools = [p[torch.randperm(len(p), generator=g)].tolist() for p in pools]
    order = torch.randperm(len(pools), generator=g).tolist()  # which classes get the remainder
    chosen: list[int] = []
    for rank in range(max(len(p) for p in pools)):
        if len(chosen) >= n:
            break
        for c in order:
            if len(chosen) < n and rank < len(pools[c]):
                chosen.append(pools[c][rank])
    return sorted(chosen)


def train_test(name: str, root: str | Path | None = None, limit: int | None = None, seed: int = 0,
               **kw) -> tuple[Dataset, Dataset]:
    """The training and test split of data set ``name`` (:func:`get_dataset` with the splits of
    ``_TRAIN_TEST``, else ``train`` / ``test``). This is the pair the command line trains and evaluates on.

    ``limit``: keep ``limit`` samples of each split, a seeded class-balanced subset (:func:`balanced_subset`):
    the files of most data sets are sorted by class, so their first samples would be one or two classes."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    pair = []
    for split in _TRAIN_TEST.get(name, ("train", "test")):
        data = get_dataset(name, root, split, **kw)
        if limit is not None and limit < len(data):
            tensor = isinstance(data, TensorData)
            index = balanced_subset(data.tensors[1] if tensor else data.targets, limit, seed)
            if isinstance(data, TextData):
                data = data.subset(index)
            else:
                data = TensorData(*(t[index] for t in data.tensors), data.classes) if tensor else _Part(data, index)
        pair.append(data)
    return pair[0], pair[1]


class _Part(Subset):
    """Some samples of a file-streamed data set, keeping its ``classes`` and ``targets``."""

    def __init__(self, data: Dataset, index: list[int]) -> None:
        super().__init__(data, index)
        self.classes = data.classes
        self.targets = [data.targets[i] for i in index]
