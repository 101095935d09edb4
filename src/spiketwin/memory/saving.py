"""The mechanisms of :mod:`spiketwin.memory`: packing blocks, the BatchNorm -> LIF recompute, compact max pooling."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..kernels import lif as lif_ops
from ..neurons import LIF, lif_scan, native_affine_scan

_state = threading.local()


def _enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def float_saves() -> Iterator[None]:
    """Within this block the savings of this module are off: autograd keeps what it keeps by default."""
    before = _enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = before


def _active() -> bool:
    return _enabled() and torch.is_grad_enabled()


def _tracker():
    """The :class:`~spiketwin.memory.packing._Tracker` of the packed model whose forward is running, if any."""
    return getattr(_state, "tracker", None)


Code = tuple[torch.dtype, float, int]
"""How a saved tensor is packed: the stored dtype (``bool`` or ``uint8``), the step its whole numbers count, and
which registration of its storage address this is (a packed copy is shared only within one registration: an
address freed and taken by another tensor is a new one)."""


def _saving_hooks(lookup: Callable[[int], Code | None]) -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks that pack every floating tensor whose storage address ``lookup`` knows, as its code says.
    Within one use of the hooks, a tensor saved by several layers is packed once (the cache holds the packed copy
    weakly: each copy is freed in backward as soon as the last layer that saved it is done)."""
    cache: dict[tuple, weakref.ref] = {}

    def pack(t: torch.Tensor):
        if not t.is_floating_point() or not _enabled():
            return t
        ptr = t.untyped_storage().data_ptr()
        code = lookup(ptr)
        if code is None:
            return t
        kind, scale, registration = code
        key = (registration, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        data = cache[key]() if key in cache else None
        if data is None:
            data = (t if scale == 1.0 else torch.div(t, scale).round_()).to(kind)
            cache[key] = weakref.ref(data)
        return data, t.dtype, scale

    def unpack(packed):
        if not isinstance(packed, tuple):
            return packed
        data, float_dtype, scale = packed
        out = data.to(float_dtype)
        return out if scale == 1.0 else out.mul_(scale)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


@contextlib.contextmanager
def _packed(tensors: tuple[torch.Tensor, ...], dtype: torch.dtype, step: float) -> Iterator[None]:
    """Pack saved tensors that share storage with ``tensors`` as ``dtype`` holding ``value / step``.

    Blocks nest: the innermost one packs what every enclosing block registered as well.
    """
    if not tensors or not _active():
        yield
        return
    outer: dict[int, Code] = getattr(_state, "registry", {})
    registry = {**outer, **{t.untyped_storage().data_ptr(): (dtype, step, 0) for t in tensors}}  # alive: one each
    _state.registry = registry
    try:
        with _saving_hooks(registry.get):
            yield
    finally:
        _state.registry = outer


def spikes_saved_as_bool(*spikes: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Pack tensors saved for backward inside this block as ``bool`` when they share storage with ``spikes``."""
    return _packed(spikes, torch.bool, 1.0)


def counts_saved_as_uint8(*counts: torch.Tensor, step: float = 1.0) -> contextlib.AbstractContextManager[None]:
    """Pack tensors saved for backward inside this block as ``uint8`` when they share storage with ``counts``,
    which must hold ``step`` times whole numbers in 0..255. Unpacking computes ``n * step`` again, so a tensor
    computed as (whole numbers) ``* step`` comes back bit for bit."""
    return _packed(counts, torch.uint8, float(step))


class _Recompute:
    """What :func:`batch_norm_lif` keeps instead of the LIF's potentials: how to compute them again."""

    def __init__(self, z: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, lif: LIF, shape: torch.Size) -> None:
        self.z, self.shape, self.params = z, shape, lif.params
        self.v0 = None if lif.v is None else lif.v.detach()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.stats = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
        self.versions = self._versions()

    def _versions(self) -> list[int]:
        """In-place write counters of what the recomputation reads."""
        return [t._version for t in (self.z, self.weight, self.bias) if t is not None]

    def _fused(self, v0: torch.Tensor) -> torch.Tensor | None:
        """The potentials by one native pass over ``z`` (:func:`~spiketwin.neurons.native_affine_scan`), with
        BatchNorm's output computed from the batch statistics as torch's CPU kernel computes it; None where that
        kernel does not run (then :meth:`potentials` runs BatchNorm and the scan again)."""
        if not lif_ops.runs_on(self.z, v0, cuda=False):
            return None
        mean, invstd = _batch_stats(self.z, self.eps)
        # torch's per-channel terms, computed as its batch_norm kernel does: scale = invstd * weight,
        # shift = bias - mean * scale (rounded once); then output = z * scale + shift (rounded once)
        scale = invstd if self.weight is None else invstd * self.weight
        shift = torch.addcmul(torch.zeros_like(mean) if self.bias is None else self.bias, mean, scale, value=-1)
        return native_affine_scan(self.z, scale, shift, v0, self.params, self.shape[0])

    def potentials(self) -> torch.Tensor:
        if self._versions() != self.versions:
            raise RuntimeError("batch_norm_lif: the BatchNorm input or parameters were modified in place between "
                               "forward and backward; the LIF potentials cannot be recomputed")
        with torch.no_grad():
            v0 = torch.full(self.shape[1:], self.params.v_reset or 0.0, dtype=self.z.dtype, device=self.z.device) \
                if self.v0 is None else self.v0
            fused = self._fused(v0)
            if fused is not None:
                return fused
            # the training-mode call of the forward (statistics of the batch), bit for bit
            stats = [None if s is None else s.clone() for s in self.stats]  # updated here, then dropped
            y = nn.functional.batch_norm(self.z, *stats, self.weight, self.bias, True, 0.0, self.eps)
            y = y.view(self.shape)
            lif_scan(y, v0, self.params, out=y)
        return y


def _batch_stats(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean and inverse standard deviation (per channel, ``z``'s dtype) that torch's CPU BatchNorm
    computes in training, bit for bit: the same reduction (``torch.batch_norm_update_stats``, without running
    statistics) gives the mean and the biased variance, and ``1 / sqrt(var + eps)`` is taken in double precision
    by ``rsqrt``, as that kernel does (0 where both are 0). ``tests/test_memory.py`` checks this against what
    BatchNorm keeps for its own backward."""
    mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
    invstd = torch.rsqrt(var.double() + eps)
    if eps == 0:
        invstd = invstd.masked_fill(var == 0, 0.0)
    return mean, invstd.to(z.dtype)


def _recomputing(z: torch.Tensor, bn: nn.Module, lif: nn.Module, y: torch.Tensor) -> contextlib.AbstractContextManager:
    """Around ``lif(y)``, ``y`` a view of ``bn(z)``: the LIF's potentials are kept as a recipe to compute them again
    from ``z`` (training, gradients, a plain sequence-mode :class:`LIF`), else nothing changes."""
    if not (_active() and bn.training and type(lif) is LIF and lif.step_mode == "m" and y.requires_grad):
        return contextlib.nullcontext()
    recipe = _Recompute(z, bn, lif, y.shape)

    def pack(t: torch.Tensor):  # the only tensor the LIF saves: its potentials
        return recipe if t.shape == recipe.shape and t.is_floating_point() else t

    def unpack(packed):
        return packed.potentials() if packed is recipe else packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def batch_norm_lif(z: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, lif: LIF, shape) -> torch.Tensor:
    """``lif(bn(z).view(shape))``: BatchNorm, then a LIF in sequence mode (``shape`` = ``[T, ...]``).

    In training with gradients the LIF does not keep its potentials ``H`` (as large as ``z``, float): BatchNorm
    keeps ``z``, and backward computes ``H`` again from it (one BatchNorm and one LIF forward pass more, fused
    into one native pass where it can run).
    Otherwise, and for a step-mode LIF or a LIF subclass, it is exactly ``lif(bn(z).view(shape))``.
    """
    y = bn(z).view(shape)
    with _recomputing(z, bn, lif, y):
        return lif(y)


class _MaxPoolCompact(torch.autograd.Function):
    """2-D max pooling that keeps only its argmax indices for backward, in the smallest integer type that holds
    a position in one input plane (not ``int64``), and not its input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        ctx.args = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, *ctx.args)
        plane = x.shape[-1] * x.shape[-2]
        ctx.save_for_backward(indices.to(torch.int16 if plane <= 2**15 else torch.int32))
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (indices,) = ctx.saved_tensors
        like = grad.new_empty(ctx.shape)  # gives the input's shape only: the scatter reads no input value
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, like, *ctx.args, indices.long()), None


class CompactMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same output and gradient, whose backward keeps the argmax indices as ``int16``
    (``int32`` for input planes over 32768 elements) instead of ``int64``, and nothing else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices or not (_active() and x.requires_grad):
            out = super().forward(x)
        else:
            out = _MaxPoolCompact.apply(x, self)
        tracker = _tracker()
        found = None if tracker is None else tracker.kind(x)
        if found is not None:  # the maximum of spikes (or counts) is one of them
            tracker.mark(out, *found)
        return out
