"""CIFAR-10 and CIFAR-100 from their published python pickle batches, read without running code.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-batches-py/`` holds ``data_batch_1`` ...
``data_batch_5``, ``test_batch`` and ``batches.meta``; ``cifar-100-python/`` holds ``train``, ``test`` and
``meta``. Each batch is a Python 2 pickle of a dict: ``data`` is a ``[N, 3072]`` uint8 array (1024 red, then
1024 green, then 1024 blue values, each a 32x32 image in row-major order), ``labels`` (CIFAR-10) or
``fine_labels`` / ``coarse_labels`` (CIFAR-100) are lists of N ints. The meta files name the classes.

The pickles are opened with :class:`SafeUnpickler`, which resolves only the globals that a pickled numpy
array needs; anything else (a class, a function such as ``os.system``) is refused, so a tampered file
raises an error instead of executing code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

try:  # numpy >= 2 moved the array internals to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
_CIFAR100_LABELS = {"fine": ("fine_labels", "fine_label_names", 100), "coarse": ("coarse_labels",
                                                                                 "coarse_label_names", 20)}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles ``bytes`` under protocol 2 (``_codecs.encode(text, 'latin1')``), and nothing else."""
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r} (only latin1 is allowed)")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that allows plain containers, numbers, strings and numpy arrays, and no other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and plain containers are allowed"
            ) from None


def safe_unpickle(path: str | Path) -> dict:
    """Load a CIFAR-style pickle (a dict) with :class:`SafeUnpickler`; keys and strings come back as ``str``.

    Errors name the file: missing (``FileNotFoundError``), truncated, corrupt or holding a forbidden global
    (``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"CIFAR file {path} is not a readable pickle batch ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {_text(k): v for k, v in obj.items()}


def _text(value):
    """Python 2 strings arrive as ``bytes``: decode them (recursively in lists)."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise ValueError(f"CIFAR file {path} has no field {key!r} (fields: {sorted(batch)})")
    return batch[key]


def _images(batch: dict, path: Path) -> np.ndarray:
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ValueError(f"CIFAR file {path}: field 'data' is {dtype} {shape}, expected uint8 [N, 3072]")
    return data.reshape(-1, 3, 32, 32)


def _labels(batch: dict, key: str, n: int, num_classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(_field(batch, key, path))
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"CIFAR file {path}: field {key!r} has shape {labels.shape} ({labels.dtype}), "
                         f"expected {n} integers for the {n} images")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"CIFAR file {path}: field {key!r} has labels outside [0, {num_classes})")
    return labels.astype(np.int64)


def _folder(root: str | Path, name: str) -> Path:
    """``root`` may be the extracted folder itself or the folder that contains it."""
    root = Path(root)
    if root.name == name:
        return root
    if (root / name).is_dir():
        return root / name
    raise FileNotFoundError(f"CIFAR: no folder {root / name} (extract the python version of the archive there, "
                            f"or pass that folder itself as root)")


def _load(folder: Path, files: list[str], key: str, num_classes: int):
    xs, ys = [], []
    for name in files:
        batch = safe_unpickle(folder / name)
        x = _images(batch, folder / name)
        xs.append(x)
        ys.append(_labels(batch, key, len(x), num_classes, folder / name))
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    return x, torch.from_numpy(np.concatenate(ys))


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")


def _cifar100_labels(labels: str) -> tuple[str, str, int]:
    """(label field, class-name field, number of classes) of CIFAR-100's ``"fine"`` or ``"coarse"`` labels."""
    if labels not in _CIFAR100_LABELS:
        raise ValueError(f"CIFAR-100 labels must be 'fine' or 'coarse', got {labels!r}")
    return _CIFAR100_LABELS[labels]


def load_cifar10(root: str | Path, split: str = "train"):
    """Return ``(x, y)``: ``x`` ``[N, 3, 32, 32]`` float in ``[0, 1]``, ``y`` int64 in ``[0, 10)``.

    ``root`` is ``cifar-10-batches-py`` or its parent; ``split`` is ``"train"`` (50,000 images from
    ``data_batch_1..5``) or ``"test"`` (10,000 from ``test_batch``).
    """
    _check_split(split)
    return _load(_folder(root, _CIFAR10_DIR), _CIFAR10_FILES[split], "labels", 10)


def load_cifar100(root: str | Path, split: str = "train", labels: str = "fine"):
    """Return ``(x, y)`` of CIFAR-100: ``x`` ``[N, 3, 32, 32]`` in ``[0, 1]``; ``y`` the ``"fine"`` (100
    classes) or ``"coarse"`` (20 superclasses) labels. ``root`` is ``cifar-100-python`` or its parent."""
    _check_split(split)
    key, _, num_classes = _cifar100_labels(labels)
    return _load(_folder(root, _CIFAR100_DIR), _CIFAR100_FILES[split], key, num_classes)


def cifar_classes(root: str | Path, dataset: str = "cifar10", labels: str = "fine") -> list[str]:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100, ``labels`` fine or coarse)."""
    if dataset == "cifar10":
        path = _folder(root, _CIFAR10_DIR) / "batches.meta"
        key = "label_names"
    elif dataset == "cifar100":
        key = _cifar100_labels(labels)[1]
        path = _folder(root, _CIFAR100_DIR) / "meta"
    else:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    names = _text(_field(safe_unpickle(path), key, path))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"CIFAR file {path}: field {key!r} is not a list of names")
    return names
