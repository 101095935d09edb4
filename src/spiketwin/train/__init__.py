"""Training: ANN, QAT (a QANN trains like any model) and direct BPTT training of spiking models.

``fit`` is the loop: AdamW, linear warm-up then cosine decay, label smoothing, mixup, spiking state reset after
every batch. Data is a pair of tensors ``(x, y)`` (``x`` may be a dict of keyword tensors: ``input_ids``,
``attention_mask``), or a map-style ``Dataset`` of
``(x, label)`` items read batch by batch (file-streamed data: image folders, event frames; see :func:`collate`).
With ``TrainConfig.out_dir`` it writes a metrics log
(``metrics.jsonl``, one JSON object per epoch) and a checkpoint (``checkpoint.safetensors``: model, optimizer,
scheduler, RNG state, epoch and history; written atomically, loaded without running code) after every epoch;
``resume=True`` continues from it exactly where it stopped. The run holds an exclusive lock on ``out_dir``
(:func:`run_dir_lock`), so a second run into the same directory fails at once instead of mixing files.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), ``fit`` initialises ``torch.distributed`` (NCCL on CUDA, Gloo on CPU),
wraps the model in ``DistributedDataParallel`` and gives each process its share of every epoch, like
``DistributedSampler``: ``batch_size`` is per process, one step sees ``world_size * batch_size`` samples.

The command line is ``spiketwin train`` (``python -m spiketwin.train`` is the same command)::

    spiketwin train --model spikformer_cifar10 --data mnist --data-root ../shared/data/mnist \\
        --set dim=64 depth=1 num_heads=4 T=4 --epochs 3 --run-dir runs/mnist [--resume]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..amp import MixedPrecision
from .. import inputs
from ..base import reset
from ..distributed import all_sum, process_group
from ..memory import pack
from ..utils import atomic_write, load_state_dict_checked, logits_of, progress_bar, read_metadata, safetensors_torch

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
LOCK = "run.lock"


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    progress: bool = True
    mixup_alpha: float = 0.0
    """Mix each batch with its reverse, ``x·λ + flip(x)·(1-λ)``, ``λ ~ Beta(α, α)`` per batch; 0 turns it off."""
    mixup_off_epoch: int | None = None
    """Epochs from this one on train without mixup (the official Spikformer recipe: 200 of 300)."""
    out_dir: str | None = None
    """Where ``metrics.jsonl`` and ``checkpoint.safetensors`` go (nothing is written when None)."""
    resume: bool = False
    """Continue from ``out_dir``'s checkpoint when there is one."""
    workers: int = 0
    """Processes that read a ``Dataset``'s items (``DataLoader``'s ``num_workers``); 0 reads them in this one."""
    amp: str | None = None
    """Mixed precision: ``"bf16"`` or ``"fp16"`` autocast (fp16 with loss scaling), None for full precision
    (:mod:`spiketwin.amp`)."""
    pack_memory: bool = True
    """Apply :func:`spiketwin.memory.pack` to the model first: spikes and spike counts kept for backward as
    ``bool`` / ``uint8``, BatchNorm -> LIF potentials recomputed (same gradients, less memory)."""
    compile: bool = False
    """Train through ``torch.compile(model)`` (inductor; the LIF kernels stay single operators in its graph): fewer,
    fused kernels and less host time per step, after a compilation on the first step (a minute or two). Needs
    ``pack_memory=False``: the compiled graph's partitioner chooses what backward keeps (docs/gpu.md)."""


Inputs = torch.Tensor | dict[str, torch.Tensor]
"""A model input: one tensor, or a dict of tensors passed as keyword arguments (``input_ids``, ...)."""


def collate(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(x, label)`` items of a ``Dataset`` into a batch: images ``[C, H, W]`` give ``[B, C, H, W]``;
    sequences ``[T, C, H, W]`` (event frames) give ``[T, B, C, H, W]``, time first as the spiking models take them."""
    xs = [torch.as_tensor(item[0]) for item in items]
    return torch.stack(xs, dim=1 if xs[0].dim() == 4 else 0), torch.tensor([int(item[1]) for item in items])


def _size(x: Inputs | Dataset, y: torch.Tensor | None, who: str) -> int:
    """Number of samples of ``(x, y)`` tensors, or of a ``Dataset`` ``x`` (``y`` None); checks they agree and
    that there is at least one."""
    if y is None:
        if not isinstance(x, Dataset):
            raise TypeError(f"{who}: without labels y, x must be a Dataset of (x, label) items, got {type(x).__name__}")
        n = len(x)
    else:
        for name, v in (x.items() if isinstance(x, dict) else [("x", x)]):
            if len(v) != len(y):
                raise ValueError(f"{who}: {name} has {len(v)} samples but y has {len(y)}")
        n = len(y)
    if n == 0:
        raise ValueError(f"{who}: no samples (the data set, or this split of it, is empty)")
    return n


def _batches_of(x: Inputs | Dataset, y: torch.Tensor | None, index_batches: Sequence[torch.Tensor],
                workers: int = 0) -> Iterable[tuple[Inputs, torch.Tensor]]:
    """The batches ``(x[idx], y[idx])`` for each index tensor; a ``Dataset`` is read item by item (:func:`collate`),
    by ``workers`` processes when > 0."""
    if y is None:
        return DataLoader(x, batch_sampler=[idx.tolist() for idx in index_batches], num_workers=workers,
                          collate_fn=collate)
    return ((inputs.select(x, idx), y[idx]) for idx in index_batches)


def batches(x: Inputs | Dataset, y: torch.Tensor | None, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterable[tuple[Inputs, torch.Tensor]]:
    """Mini-batches of ``(x, y)`` (shuffled with ``generator`` when ``shuffle``); ``x`` is a tensor or a
    dict of tensors with ``len(y)`` rows each, or a ``Dataset`` of ``(x, label)`` items with ``y`` None."""
    n = _size(x, y, "batches")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return _batches_of(x, y, order.split(batch_size))


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This process's sample indices for ``epoch``: one shuffle shared by all processes (seeded by
    ``seed`` and ``epoch``, so a resumed run sees the same order), padded by wrapping around to a multiple of
    ``world_size``, then every ``world_size``-th index from ``rank`` (``DistributedSampler``'s split)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    pad = -n % world_size
    if pad:
        order = torch.cat([order, order[:pad]])
    return order[rank::world_size]


def mixup(x: torch.Tensor, lam: float, batch_dim: int = 0) -> torch.Tensor:
    """``x·λ + flip(x)·(1-λ)``: each sample mixed with its mirror in the batch (timm's "batch" mode; the batch
    is dimension ``batch_dim``: 1 for time-first sequences). The matching loss is
    ``λ·CE(out, y) + (1-λ)·CE(out, flip(y))``."""
    return x.mul(lam).add_(x.flip(batch_dim), alpha=1.0 - lam)



# ---------------------------------------------------------------- checkpoints

def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, history: list[dict],
                        config: TrainConfig | None = None, precision: MixedPrecision | None = None) -> Path:
    """Write everything needed to continue training after ``epoch`` epochs to ``path`` (safetensors).

    Tensors: ``model.*`` (state dict), ``optim.<param index>.<name>`` (optimizer state), ``rng.torch`` and
    ``rng.cuda.<i>``. The metadata entry ``spiketwin.train`` holds JSON: epoch, history, the optimizer's
    param groups, the scheduler state, the config and the float16 loss scaler's state (``precision``). Written to
    a temporary file, synced, then renamed over ``path``, so a crash never leaves a half-written checkpoint.
    """
    st = safetensors_torch()
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()

    def put(key: str, t: torch.Tensor) -> None:
        t = t.detach().cpu().contiguous()
        if t.numel() and (t.data_ptr(), t.numel()) in seen:  # safetensors refuses shared storage
            t = t.clone()
        if t.numel():
            seen.add((t.data_ptr(), t.numel()))
        tensors[key] = t

    for k, v in model.state_dict().items():
        put(f"model.{k}", v)
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, v in state.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"save_training_state: optimizer state {idx}.{name} is not a tensor ({type(v)})")
            put(f"optim.{idx}.{name}", v)
    put("rng.torch", torch.get_rng_state())
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            put(f"rng.cuda.{i}", s)
    meta = {"epoch": epoch, "history": history, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict(), "config": asdict(config) if config else None,
            "amp": precision.state_dict() if precision else None}
    data = st.save(tensors, metadata={"spiketwin.train": json.dumps(meta)})
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler,
                        precision: MixedPrecision | None = None) -> tuple[int, list[dict]]:
    """Restore a :func:`save_training_state` checkpoint into ``model``, ``optimizer``, ``scheduler``, the RNG and
    ``precision``'s loss scaler.
    Returns ``(epochs done, history)``. Errors name the file and what does not fit."""
    meta = read_metadata(path, "training checkpoint").get("spiketwin.train")
    if meta is None:
        raise ValueError(f"{path} has no 'spiketwin.train' metadata: it is not a training checkpoint written by "
                         "spiketwin.train (model-only checkpoints cannot resume training)")
    meta = json.loads(meta)
    tensors = safetensors_torch().load_file(str(path))
    device = next(model.parameters()).device
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_dict_checked(model, model_state, f"training checkpoint {path}")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except ValueError as e:
        raise ValueError(f"{path}: the optimizer state does not fit this model's parameters: {e}") from e
    scheduler.load_state_dict(meta["scheduler"])
    if precision is not None:
        precision.load_state_dict(meta.get("amp"))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states and device.type == "cuda":
        torch.cuda.set_rng_state_all(cuda_states)
    return int(meta["epoch"]), list(meta["history"])


# ---------------------------------------------------------------- the run directory's lock

class RunDirLocked(RuntimeError):
    """Another process holds the lock of the run directory (:func:`run_dir_lock`)."""


_locked_here: set[Path] = set()  # run directories this process holds


@contextlib.contextmanager
def run_dir_lock(path: str | Path):
    """Hold an exclusive lock on the run directory ``path`` (created if missing) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``path/run.lock``, which holds the owner's pid while locked (the file stays,
    empty, when free: removing it could let two runs lock two different files of that name). A second process
    gets :class:`RunDirLocked` naming the directory and that pid. The operating system drops the lock when its
    process dies (even by SIGKILL), so a crashed run never leaves a stale lock. Nested use in the process that
    holds it is a no-op (the command line locks around ``fit``, which locks too). Where ``fcntl`` is missing
    (Windows) nothing is locked.
    """
    directory = Path(path).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or directory in _locked_here:
        yield directory
        return
    with open(directory / LOCK, "a+") as f:  # "a+": opening must not erase the holder's pid
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirLocked(f"run directory {directory} is in use by another run (pid {holder} holds "
                               f"{directory / LOCK}); wait for it, stop it, or choose another directory") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        _locked_here.add(directory)
        try:
            yield directory
        finally:
            _locked_here.discard(directory)
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the loop

def fit(model: nn.Module, x: Inputs | Dataset, y: torch.Tensor | None, config: TrainConfig | None = None,
        eval_data: tuple[Inputs, torch.Tensor] | Dataset | None = None) -> list[dict]:
    """Train ``model`` on ``x`` (a tensor, or a dict of keyword inputs) and ``y`` (class labels), or on a
    ``Dataset`` ``x`` of ``(x, label)`` items with ``y`` None (batched by :func:`collate`). The model returns logits,
    or an object holding them (``.logits``: a Hugging Face output, :func:`spiketwin.utils.logits_of`).
    Returns one record per epoch
    (``epoch``, ``loss`` (mean over the epoch's samples, all processes), ``lr``, ``seconds`` and ``accuracy`` on
    ``eval_data`` (a pair of tensors or a ``Dataset``) when given); a resumed run returns the earlier epochs'
    records too."""
    cfg = config or TrainConfig()
    if cfg.compile and cfg.pack_memory:
        raise ValueError("fit: compile=True needs pack_memory=False (memory.pack's saved-tensor hooks and recompute "
                         "do not trace; the compiled graph chooses what backward keeps itself)")
    if cfg.pack_memory:
        pack(model)
    n = _size(x, y, "fit")
    device = next(model.parameters()).device
    rank, world = process_group(device)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    with run_dir_lock(out) if out is not None and rank == 0 else contextlib.nullcontext():  # rank 0 writes there
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(math.ceil(n / world) / cfg.batch_size)
        total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warmup))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        precision = MixedPrecision(cfg.amp, device)
        history: list[dict] = []
        start = 0
        if cfg.resume and out is not None and (out / CHECKPOINT).is_file():
            start, history = load_training_state(out / CHECKPOINT, model, optimizer, scheduler, precision)
            if rank == 0:  # the log says what the checkpoint holds, nothing after it
                (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in history))
        net = model
        if world > 1:
            unused = getattr(model, "unused_parameter_names", list)()  # e.g. the official Spikformer's LayerNorms
            net = nn.parallel.DistributedDataParallel(model,
                                                      device_ids=[device.index] if device.type == "cuda" else None,
                                                      find_unused_parameters=bool(unused))
        if cfg.compile:  # static shapes: a last, smaller batch compiles once more (with a symbolic batch, inductor
            net = torch.compile(net, dynamic=False)  # 2.13 failed on the Spikformer: "truth value of Relational")
        for epoch in range(start, cfg.epochs):
            model.train()
            began = time.perf_counter()
            use_mixup = cfg.mixup_alpha > 0 and (cfg.mixup_off_epoch is None or epoch < cfg.mixup_off_epoch)
            lams = np.random.default_rng([cfg.seed, epoch, rank])  # mixup's λ, reproducible per epoch and process
            sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss * samples, samples
            indices = epoch_indices(n, cfg.seed, epoch, rank, world).split(cfg.batch_size)
            for xb, yb in progress_bar(_batches_of(x, y, indices, cfg.workers), steps_per_epoch,
                                    f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and rank == 0):
                xb, yb = inputs.to(xb, device), yb.to(device)
                with precision.autocast():
                    if use_mixup:
                        if isinstance(xb, dict):
                            raise ValueError("mixup mixes input tensors; it does not apply to dict (token) inputs")
                        lam = float(lams.beta(cfg.mixup_alpha, cfg.mixup_alpha))
                        mixed = mixup(xb, lam, batch_dim=1 if y is None and xb.dim() == 5 else 0)
                        logits = logits_of(net(mixed), "fit")
                        loss = lam * loss_fn(logits, yb) + (1 - lam) * loss_fn(logits, yb.flip(0))
                    else:
                        loss = loss_fn(logits_of(inputs.call(net, xb), "fit"), yb)
                optimizer.zero_grad(set_to_none=True)
                precision.step(loss, optimizer)
                scheduler.step()
                reset(model)
                sums[0] += loss.detach().double() * len(yb)
                sums[1] += len(yb)
            sums = all_sum(sums, world).cpu()
            record = {"epoch": epoch + 1, "loss": float(sums[0] / sums[1]), "lr": scheduler.get_last_lr()[0],
                      "seconds": time.perf_counter() - began}
            if eval_data is not None:
                test = (eval_data, None) if isinstance(eval_data, Dataset) else eval_data
                record["accuracy"] = evaluate(model, *test, batch_size=cfg.batch_size)
            history.append(record)
            if out is not None and rank == 0:
                save_training_state(out / CHECKPOINT, model, optimizer, scheduler, epoch + 1, history, cfg, precision)
                with open(out / METRICS, "a") as f:
                    f.write(json.dumps(record) + "\n")
        return history


@torch.no_grad()
def evaluate(model: nn.Module, x: Inputs | Dataset, y: torch.Tensor | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (or on a ``Dataset`` ``x``, ``y`` None), in ``[0, 1]``."""
    n = _size(x, y, "evaluate")
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        logits = logits_of(inputs.call(model, inputs.to(xb, device)), "evaluate")
        correct += (logits.argmax(-1).cpu() == yb).sum().item()
        reset(model)
    return correct / n
