"""Run a converted SNN: ``simulate(snn, x, max_steps)`` -> summed output, running output, settle steps.

Each SNN family (SpikeZIP-TF ST-BIF networks, SpikeConverter iLIF networks) implements its own
``snn.simulate(x, max_steps=..., step_mode=...)`` returning a :class:`SimResult`; this function is the
one entry point users learn. :func:`evaluate_per_step` runs a whole test set batch by batch, sharded over the
processes of a ``torchrun`` launch.

TF32 policy: exactness needs full float32 matrix products, and on Ampere and later GPUs PyTorch may compute
float32 convolutions (cuDNN's default) and matrix products (when a user turned it on) in TF32, with a 10-bit
mantissa. :func:`simulate` and :func:`evaluate_per_step` therefore turn TF32 off for their run and restore the
caller's settings afterwards (:func:`full_float32`); ``allow_tf32=True`` keeps the caller's settings.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import gather_objects, process_group
from .inputs import Inputs, count, select, to
from .utils import progress_bar


@dataclass
class SimResult:
    """What a simulation returns.

    - ``output``: ``[B, ...]`` the summed (decoded) output at the last step run: the logits.
    - ``per_step``: ``[T, B, ...]`` the running output after each step (``per_step[t]`` is the prediction if
      the simulation stopped after step ``t + 1``); steps after a sample settled repeat its final value.
    - ``settle_step``: ``[B]`` int64, the number of steps a sample needed to reach its exact final output,
      ``-1`` where ``max_steps`` ran out first. Where a neuron's state cannot be kept per sample (the SNN's
      ``droppable`` is False: a model that mixes samples, docs/spikezip.md) every sample gets the batch's last.
    """

    output: torch.Tensor
    per_step: torch.Tensor
    settle_step: torch.Tensor

    @property
    def settled(self) -> torch.Tensor:
        return self.settle_step >= 0

    def accuracy_per_step(self, labels: torch.Tensor) -> torch.Tensor:
        """``[T]`` accuracy of the running prediction after each step."""
        return (self.per_step.argmax(-1) == labels.to(self.per_step.device)).double().mean(-1)


@contextlib.contextmanager
def full_float32(allow_tf32: bool = False):
    """A context in which float32 matrix products and cuDNN convolutions run in full float32, not TF32 (see the
    module's TF32 policy); the caller's settings come back on exit. ``allow_tf32=True`` changes nothing.

    It sets the flags through whichever of PyTorch's two interfaces the caller's settings were made with (the
    ``allow_tf32`` flags, or the newer ``fp32_precision`` ones): PyTorch refuses to read a mix of the two.
    """
    if allow_tf32:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:  # the older interface
        saved = torch.get_float32_matmul_precision(), cudnn.allow_tf32
        def put(state):
            torch.set_float32_matmul_precision(state[0])
            cudnn.allow_tf32 = state[1]
        off = ("highest", False)
    except RuntimeError:  # the caller used the newer interface (torch >= 2.9), which the older one cannot read
        saved = matmul.fp32_precision, cudnn.conv.fp32_precision
        def put(state):
            matmul.fp32_precision, cudnn.conv.fp32_precision = state
        off = ("ieee", "ieee")
    put(off)
    try:
        yield
    finally:
        put(saved)


def simulate(snn: nn.Module, x, max_steps: int | None = None, step_mode: str = "m", allow_tf32: bool = False,
             **kwargs) -> SimResult:
    """Simulate ``snn`` on input ``x`` (a tensor, or a dict of tensors passed as keyword arguments).

    ``step_mode="m"`` runs whole chunks of time steps at once (fast); ``"s"`` runs step by step (the
    reference). Both give identical results. TF32 is off during the run unless ``allow_tf32`` (module doc).
    """
    run = getattr(snn, "simulate", None)
    if run is None:
        raise TypeError(f"simulate: {type(snn).__name__} is not a converted SNN (it has no .simulate); "
                        "build one with spiketwin.convert.to_snn(qann)")
    with full_float32(allow_tf32):
        return run(x, max_steps=max_steps, step_mode=step_mode, **kwargs)


@dataclass
class StepEvaluation:
    """A test set simulated batch by batch (:func:`evaluate_per_step`).

    - ``accuracy``: ``[T]`` accuracy of the running prediction after each step, ``T`` the longest run (a batch
      that stopped earlier keeps its final answer);
    - ``settle_step``: ``[N]`` as in :class:`SimResult` (``-1``: not settled within ``max_steps``);
    - ``prediction``: ``[N]`` the class of the summed output at the end.
    """

    accuracy: torch.Tensor
    settle_step: torch.Tensor
    prediction: torch.Tensor


def evaluate_per_step(snn: nn.Module, x: Inputs, y: torch.Tensor, batch_size: int = 128,
                      max_steps: int | None = None, step_mode: str = "m", progress: bool = False,
                      steps: int | None = None, allow_tf32: bool = False) -> StepEvaluation:
    """Simulate ``snn`` on ``x`` (a tensor, or a dict of keyword tensors) in batches of ``batch_size`` (on the SNN's
    device, a progress bar when ``progress``) and score the running prediction after every step against the labels
    ``y``. Only counts are kept per batch, so memory does not grow with the number of classes. ``steps`` pads the
    curve to at least that length (e.g. ``max_steps``, to report accuracy at fixed T).

    Under ``torchrun`` (or inside an initialised process group) every process passes the whole ``x`` and ``y``
    and simulates its share: process ``r`` of ``W`` takes the batches ``r, r + W, r + 2W, ...`` of the batches
    above, so every batch holds the same samples as in one process. The per-batch results are gathered in the
    original order, and every process returns exactly what a single process would.
    """
    if count(x) != len(y) or len(y) == 0:
        raise ValueError(f"evaluate_per_step: x has {count(x)} samples, y {len(y)}; need as many, at least one")
    y = y.cpu()  # the results are scored and kept on the CPU, whatever device the labels came on
    device = next(snn.parameters()).device
    rank, world = process_group(device)
    mine = range(rank * batch_size, len(y), world * batch_size)
    batches = []  # (correct [T_b], settle [b], prediction [b]) of this process's batches, on the CPU
    for i in progress_bar(mine, len(mine), "SNN", progress and rank == 0):
        batch = to(select(x, slice(i, i + batch_size)), device)
        result = simulate(snn, batch, max_steps=max_steps, step_mode=step_mode, allow_tf32=allow_tf32)
        batches.append(((result.per_step.argmax(-1).cpu() == y[i:i + batch_size]).sum(-1),
                        result.settle_step.cpu(), result.output.argmax(-1).cpu()))
    shares = gather_objects(batches, world)
    ordered = [shares[b % world][b // world] for b in range(-(-len(y) // batch_size))]  # batch b ran on b mod W
    correct, settle, prediction = (list(part) for part in zip(*ordered))
    longest = max([len(c) for c in correct] + [steps or 0])
    total = sum(torch.cat([c, c[-1:].expand(longest - len(c))]) for c in correct)
    return StepEvaluation(total.double() / len(y), torch.cat(settle), torch.cat(prediction))
