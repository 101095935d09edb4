"""Fused kernels as torch custom operators (``torch.library``), so that ``torch.compile`` and ``torch.export``
see one operator where the torch path runs many: each has a CPU implementation (the native C kernel of
:mod:`spiketwin.native`, else the torch path) and a CUDA implementation written in Triton (the optional
``triton`` package; ``TRITON_INTERPRET=1`` runs it on CPU tensors, which is how the tests check it).

- :mod:`.stbif`: ``spiketwin::stbif_steps``, the ST-BIF neuron's sequence call (multi-spike, per-sample skip), and
  ``spiketwin::stbif_exact_step``, the exact-state neuron's step (integer counts).
- :mod:`.lif`: ``spiketwin::lif_scan`` (with its autograd), ``lif_scan_backward`` and ``lif_affine_scan``, the LIF
  neuron's time scan, its backward and the BatchNorm -> LIF recompute of :mod:`spiketwin.memory`.
- :mod:`.triton_ieee`: the correctly rounded division the Triton kernels share.
- :mod:`.quantize`: the quantizer's inference pass (native C on the CPU only; a plain function, not an operator:
  the torch path is what autograd, ``torch.compile`` and CUDA see).

Here: when the Triton kernels run (:func:`triton_takes`), and on which device (:func:`launch_device`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch

TRITON_DTYPES = (torch.float32, torch.float64)
"""The dtypes the Triton kernels compute in (others take the torch path; the exact-state step also takes float16 and
bfloat16)."""


_triton_disabled = 0  # depth of nested ``triton_disabled()`` blocks


def triton_enabled() -> bool:
    """Whether the Triton kernels may run: the ``triton`` package is installed, ``SPIKETWIN_TRITON`` is not ``0``
    (set it to compare against the torch path on a GPU) and no :func:`triton_disabled` block is open."""
    return _triton_disabled == 0 and os.environ.get("SPIKETWIN_TRITON", "1") != "0" and _triton_installed()


@contextlib.contextmanager
def triton_disabled():
    """Within the block CUDA takes the torch path (to compare both paths in one process), as
    :func:`spiketwin.native.disabled` does for the CPU's native kernels."""
    global _triton_disabled
    _triton_disabled += 1
    try:
        yield
    finally:
        _triton_disabled -= 1


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_takes(*tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = TRITON_DTYPES) -> bool:
    """Whether a Triton kernel runs on these tensors: CUDA, one dtype of ``dtypes`` (default :data:`TRITON_DTYPES`),
    contiguous, no autograd."""
    first = tensors[0]
    return (first.device.type == "cuda" and first.dtype in dtypes
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and all(t.device == first.device and t.dtype == first.dtype and t.is_contiguous() for t in tensors)
            and triton_enabled())


def launch_device(tensor: torch.Tensor):
    """The context of a Triton launch on ``tensor``: Triton launches on the current CUDA device, so for the launch
    it becomes ``tensor``'s (a model on ``cuda:1`` while ``cuda:0`` is current); nothing for a CPU tensor (Triton's
    interpreter)."""
    if tensor.is_cuda and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()  # (torch.cuda.device costs ~4 us a launch on the GPU machine)
