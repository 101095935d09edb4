"""``spiketwin train`` and ``spiketwin qat``: the training options and the two commands that train."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import checkpoint
from ..convert.graph import DYNAMIC_CHOICES
from .data import add_data_options, first_samples, load_data
from .model import add_model_options, load_model
from .usage import Command, UsageError, rank


def add_training_options(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The options of :class:`spiketwin.train.TrainConfig` (AdamW, warm-up then cosine decay)."""
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default: {epochs})")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW peak learning rate (default: {lr})")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up of the learning rate over this many epochs, then cosine decay (default: 1)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default: 0)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup: each batch mixed with its reverse, lambda ~ Beta(ALPHA, ALPHA) (default: 0, off)")
    p.add_argument("--mixup-off-epoch", type=int, metavar="E", help="train without mixup from epoch E on")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes reading file-streamed training data (imagefolder, event sets) (default: 0: "
                        "this one)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="write metrics.jsonl, run.json and checkpoint.safetensors (model, optimizer, schedule, RNG; "
                        "atomic) here after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly where the checkpoint in --run-dir stopped (same flags; fresh start if none)")
    p.add_argument("--out", metavar="FILE", help="write the trained model here (safetensors, for the other commands)")
    p.add_argument("--amp", choices=("bf16", "fp16"),
                   help="mixed precision: bf16 or fp16 autocast (fp16 with loss scaling) (default: off, float32)")


def fit(model, data, args, info: dict) -> float:
    """Train ``model`` on ``data`` (``(train, test)`` from :func:`load_data`) with the training options; with
    ``--run-dir`` also write ``run.json`` (the model's ``info`` and the options) there, under the run directory's
    lock (:func:`spiketwin.train.run_dir_lock`) like the training itself. Returns test accuracy."""
    import json
    import math
    from contextlib import nullcontext

    from ..train import TrainConfig, fit, run_dir_lock

    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir DIR (the folder of the checkpoint to continue from)")
    for name in ("mixup", "label_smoothing", "warmup_epochs", "workers"):
        if getattr(args, name) < 0 or not math.isfinite(getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.label_smoothing >= 1:
        raise UsageError(f"--label-smoothing must be < 1, got {args.label_smoothing}")
    train, test = data
    compiled = getattr(args, "compile", False)  # train's flag (qat has none)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, seed=args.seed,
                      progress=not args.quiet, mixup_alpha=args.mixup, mixup_off_epoch=args.mixup_off_epoch,
                      out_dir=args.run_dir, resume=args.resume, workers=args.workers, amp=args.amp,
                      compile=compiled, pack_memory=not compiled)
    def pair(data):  # in-memory sets as tensors (fast slicing); file-streamed ones as the Dataset
        return data.tensors if hasattr(data, "tensors") else (data, None)

    writes = bool(args.run_dir) and rank() == 0
    with run_dir_lock(args.run_dir) if writes else nullcontext():  # fit's lock, taken before run.json is written
        if writes:
            options = {k: v for k, v in vars(args).items() if k not in ("config", "debug", "quiet")}
            (Path(args.run_dir) / "run.json").write_text(json.dumps({"info": info, "args": options}, indent=1))
        history = fit(model, *pair(train), cfg, eval_data=pair(test) if hasattr(test, "tensors") else test)
    accuracy = history[-1]["accuracy"]
    if rank() == 0:
        print(f"{args.command}: {len(history)} epochs, final loss {history[-1]['loss']:.4f}, "
              f"test accuracy {100 * accuracy:.2f}% ({len(test)} samples)"
              + (f"; metrics and checkpoint in {args.run_dir}" if args.run_dir else ""))
    return accuracy


def _train_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "start from this checkpoint")
    add_data_options(p)
    add_training_options(p, epochs=10, lr=1e-3)
    p.add_argument("--compile", action="store_true",  # not for qat: its quantizers' first-batch steps recompile
                   help="train through torch.compile (faster steps on a GPU after a first one that compiles; keeps "
                        "full activations for backward instead of memory.pack's packed spikes)")


def cmd_train(args) -> None:
    torch.manual_seed(args.seed)
    data = load_data(args)
    model, info = load_model(args, stages=("ann",), data=data[0])
    fit(model, data, args, info)
    if args.out and rank() == 0:
        checkpoint.save(model, args.out, info)
        print(f"train: wrote {args.out}")


def _qat_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the trained ANN (required unless --model)")
    add_data_options(p)
    add_training_options(p, epochs=3, lr=1e-4)
    p.add_argument("--levels", type=int, default=16, help="quantization levels (default: 16)")
    p.add_argument("--neuron", default="stbif", choices=("stbif", "ilif"),
                   help="stbif: SpikeZIP-TF; ilif: SpikeConverter (default: stbif)")
    p.add_argument("--dynamic", default="all", choices=DYNAMIC_CHOICES,
                   help="input dimensions the traced QANN lets vary: all (batch, sequence length, image size) or "
                        "batch (the rest fixed; traces windowed vision models such as Swin far faster) (default: all)")


def cmd_qat(args) -> None:
    from ..convert import to_qann
    from ..inputs import select, to

    torch.manual_seed(args.seed)
    data = load_data(args)
    ann, info = load_model(args, stages=("ann",), data=data[0])
    recipe = {"levels": args.levels, "neuron": args.neuron, "dynamic": args.dynamic}  # the checkpoint keeps it
    x_first, inputs = first_samples(data[0], 256)[0], {}
    if args.neuron == "ilif":
        inputs["calibration"] = to(x_first, args.device)
    elif "hf" in info:  # traced on two training samples, as the data calls it (a Hugging Face model: by keyword)
        inputs["example_inputs"] = to(select(x_first, slice(0, 2)), args.device)
    qann = to_qann(ann, **recipe, **inputs)
    info = {**info, "stage": "qann", "qann": recipe}  # an engine QANN adds its own recipe when saved
    if isinstance(x_first, torch.Tensor):
        info["input_shape"] = list(x_first.shape[1:])
    fit(qann, data, args, info)
    if args.out and rank() == 0:
        checkpoint.save(qann, args.out, info)
        print(f"qat: wrote {args.out}")


COMMANDS = {
    "train": Command("train a model (ANN, or a directly trained SNN such as scnn / Spikformer); "
                     "python -m spiketwin.train is the same command", _train_options, cmd_train),
    "qat": Command("quantization-aware training: ANN checkpoint -> QANN checkpoint", _qat_options, cmd_qat),
}
