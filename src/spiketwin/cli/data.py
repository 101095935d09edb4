"""The data options of the command line (``--data``, ``--data-root``, ...) and the data they load."""

from __future__ import annotations

import argparse

from .usage import UsageError


def add_data_options(p: argparse.ArgumentParser) -> None:
    from ..data import available_datasets

    p.add_argument("--data", default="digits", choices=available_datasets(), metavar="NAME",
                   help="digits (default): scikit-learn's bundled 8x8 digits, no files; the others read their "
                        "published files in --data-root (spiketwin.data.get_dataset, docs/data.md): mnist (IDX; the "
                        "t10k file, first --n-train to train, the rest to test), cifar10, cifar100 (python pickle "
                        "batches), imagefolder (root/train/<class>/<image>, root/val/...), dvs_gesture (AEDAT 3.1 + "
                        "labels CSV), cifar10_dvs (AEDAT 2.0), sst2 (GLUE's train.tsv / dev.tsv, tokenized with "
                        "the model's tokenizer); one of: " + ", ".join(available_datasets()))
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
    p.add_argument("--tokenizer", metavar="DIR",
                   help="sst2: the Hugging Face tokenizer's directory (default: --hf DIR, or the directory the "
                        "checkpoint's model was read from)")
    p.add_argument("--max-length", type=int, default=64, metavar="N",
                   help="sst2: tokens per sentence at most (default: 64)")


def _tokenizer(args):
    """The tokenizer of ``--tokenizer``, else of ``--hf``, else of the directory the checkpoint's model came from."""
    from .. import checkpoint
    from ..data.text import load_tokenizer

    directory = args.tokenizer or getattr(args, "hf", None)
    if not directory and getattr(args, "checkpoint", None):
        directory = checkpoint.read_info(args.checkpoint).get("hf", {}).get("dir")
    if not directory:
        raise UsageError(f"--data {args.data} is text: give --tokenizer DIR (a Hugging Face tokenizer's directory) "
                         "or --hf DIR with tokenizer files")
    return load_tokenizer(directory)


def load_data(args):
    """``(train, test)`` of ``--data`` (:func:`spiketwin.data.train_test`), cut to ``--limit``: ``TensorData``
    for in-memory sets, ``TextData`` for text, file-streamed ``Dataset`` otherwise."""
    from ..data import train_test

    if args.data != "digits" and not args.data_root:
        raise UsageError(f"--data {args.data} needs --data-root DIR (the folder of its files)")
    for name in ("limit", "batch_size", "n_train", "frames", "image_size", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    options = {"mnist": {"n_train": args.n_train}, "imagefolder": {"size": args.image_size},
               "dvs_gesture": {"frames": args.frames}, "cifar10_dvs": {"frames": args.frames}}
    if args.data == "sst2":
        options["sst2"] = {"tokenizer": _tokenizer(args), "max_length": args.max_length}
    return train_test(args.data, args.data_root, args.limit, **options.get(args.data, {}))


def first_samples(data, n: int | None = None) -> tuple:
    """``(x, y)`` of the first ``n`` samples (all by default) of a data set from :func:`load_data` (``x`` a dict of
    tensors for text)."""
    from ..inputs import select
    from ..train import collate

    if hasattr(data, "tensors"):  # in memory
        return tuple(select(t, slice(None, n)) for t in data.tensors)
    return collate([data[i] for i in range(len(data) if n is None else min(n, len(data)))])
