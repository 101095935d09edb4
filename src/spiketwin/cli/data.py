"""The data options of the command line (``--data``, ``--data-root``, ...) and the data they load."""

from __future__ import annotations

import argparse

import torch

from .usage import UsageError


def add_data_options(p: argparse.ArgumentParser) -> None:
    from ..data import available_datasets

    p.add_argument("--data", default="digits", choices=available_datasets(), metavar="NAME",
                   help="digits (default): scikit-learn's bundled 8x8 digits, no files; the others read their "
                        "published files in --data-root (spiketwin.data.get_dataset, docs/data.md): mnist (IDX; the "
                        "t10k file, first --n-train to train, the rest to test), cifar10, cifar100 (python pickle "
                        "batches), imagefolder (root/train/<class>/<image>, root/val/...), dvs_gesture (AEDAT 3.1 + "
                        "labels CSV), cifar10_dvs (AEDAT 2.0); one of: " + ", ".join(available_datasets()))
    p.add_argument("--data-root", metavar="DIR", help="folder of the data files (every data set but digits)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="use N samples of each split: a seeded, class-balanced subset (the classes in turn, each in a "
                        "fixed random order), not the first N")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (per process under torchrun; default: 64)")
    p.add_argument("--n-train", type=int, default=8000, metavar="N",
                   help="mnist: the first N images of the t10k file train, the rest test (default: 8000)")
    p.add_argument("--frames", type=int, default=16, metavar="T",
                   help="dvs_gesture, cifar10_dvs: frames per sample, split by event number (default: 16)")
    p.add_argument("--image-size", type=int, default=224, metavar="PX",
                   help="imagefolder: centre crop size after resizing the shorter side (default: 224)")


def load_data(args):
    """``(train, test)`` of ``--data`` (:func:`spiketwin.data.train_test`), cut to ``--limit``: ``TensorData``
    for in-memory sets, file-streamed ``Dataset`` otherwise."""
    from ..data import train_test

    if args.data != "digits" and not args.data_root:
        raise UsageError(f"--data {args.data} needs --data-root DIR (the folder of its files)")
    for name in ("limit", "batch_size", "n_train", "frames", "image_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    options = {"mnist": {"n_train": args.n_train}, "imagefolder": {"size": args.image_size},
               "dvs_gesture": {"frames": args.frames}, "cifar10_dvs": {"frames": args.frames}}
    return train_test(args.data, args.data_root, args.limit, **options.get(args.data, {}))


def first_samples(data, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the first ``n`` samples (all by default) of a data set from :func:`load_data`."""
    from ..data import TensorData
    from ..train import collate

    if isinstance(data, TensorData):
        return tuple(t[:n] for t in data.tensors)
    return collate([data[i] for i in range(len(data) if n is None else min(n, len(data)))])
