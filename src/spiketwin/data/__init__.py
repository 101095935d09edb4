"""Data sets read from local files (never downloaded) and the embedded default (scikit-learn's digits).

Every image loader returns float tensors ``x`` (``[N, C, H, W]``, scaled to ``[0, 1]``) and int64 labels ``y``;
event data sets give ``[T, 2, H, W]`` per-polarity counts. ``get_dataset(name, root, split)`` reaches them all.
"""

from .cifar import cifar_classes, load_cifar10, load_cifar100
from .digits import load_digits
from .events import CIFAR10DVS, DVSGesture, events_to_frames, read_aedat20_dvs128, read_aedat31
from .folder import ImageFolder
from .mnist import load_mnist, mnist_split
from .registry import TensorData, available_datasets, get_dataset, train_test

__all__ = ["load_digits", "load_mnist", "mnist_split", "load_cifar10", "load_cifar100", "cifar_classes",
           "ImageFolder", "DVSGesture", "CIFAR10DVS", "read_aedat31", "read_aedat20_dvs128", "events_to_frames",
           "TensorData", "available_datasets", "get_dataset", "train_test"]
