"""``pack(model)``: the savings of :mod:`spiketwin.memory` applied to a plain model from outside, by following
which tensors hold spikes or counts during its forward."""

from __future__ import annotations

import contextlib
import itertools
import weakref

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..neurons import IF, LIF
from .saving import Code, CompactMaxPool2d, _active, _recomputing, _saving_hooks, _state, _tracker


class _Tracker(TorchFunctionMode):
    """During a packed model's forward (with gradients): which tensors hold spikes or counts, by storage.

    A LIF's output holds spikes (0 or 1); from there values are followed through the operations that keep them
    whole numbers: copies and reshapes keep the kind, a sum of two adds their bounds, a product of two such
    matrices is bounded by the inner size times theirs, and a product with a positive Python number ``c`` holds
    ``c`` times whole numbers. A tensor written in place is forgotten. Each entry keeps a weak reference to its
    tensor: once that is gone its address may belong to another tensor, and the entry is ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[int, tuple[int, float, weakref.ref, int]] = {}  # storage -> (bound, step, tensor, serial)
        self.serials = itertools.count(1)
        self.last_bn: tuple[nn.Module, torch.Tensor, weakref.ref] | None = None  # (module, input, output)
        self.recomputing: list[tuple[nn.Module, contextlib.AbstractContextManager]] = []

    def _entry(self, ptr: int) -> tuple[int, float, weakref.ref, int] | None:
        """The live entry of storage address ``ptr``: its tensor is alive and still there."""
        entry = self.kinds.get(ptr)
        held = None if entry is None else entry[2]()
        return entry if held is not None and held.untyped_storage().data_ptr() == ptr else None

    def kind(self, t) -> tuple[int, float] | None:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return None
        entry = self._entry(t.untyped_storage().data_ptr())
        return None if entry is None else entry[:2]

    def mark(self, t, bound: int, step: float) -> None:
        """Record ``t``'s storage, unless it is known already (a view: its entry stays with the longer-lived base)."""
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and self.kind(t) is None:
            self.kinds[t.untyped_storage().data_ptr()] = (bound, step, weakref.ref(t), next(self.serials))

    def code(self, ptr: int) -> Code | None:
        """How to pack a saved tensor with storage ``ptr``: spikes as ``bool``, counts up to 255 as ``uint8``."""
        entry = self._entry(ptr)
        if entry is None:
            return None
        bound, step, _, serial = entry
        if bound <= 1 and step == 1.0:
            return torch.bool, 1.0, serial
        return (torch.uint8, step, serial) if bound <= 255 else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__" or func in _QUERIES:  # metadata: nothing to follow, at the least cost
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        rule = _RULES.get(name)
        if rule is not None and kwargs.get("out") is None:
            found = rule(self, args, kwargs)
            if found is not None and isinstance(out, torch.Tensor):
                self.mark(out, *found)
        elif _in_place(name, kwargs) and args and isinstance(args[0], torch.Tensor):
            self.kinds.pop(args[0].untyped_storage().data_ptr(), None)
            if isinstance(kwargs.get("out"), torch.Tensor):
                self.kinds.pop(kwargs["out"].untyped_storage().data_ptr(), None)
        return out


_QUERIES = frozenset((torch.Tensor.is_floating_point, torch.Tensor.numel, torch.Tensor.untyped_storage,
                      torch.Tensor.dim, torch.Tensor.is_contiguous, torch.Tensor.size, torch.Tensor.stride,
                      torch.Tensor.data_ptr, torch.Tensor.storage_offset, torch.Tensor.element_size))
"""Tensor methods that read metadata (with the attribute getters, ``__get__``, four fifths of the calls in a packed
Spikformer's forward): they make no tensor and write none, so the tracker passes them through first."""


def _in_place(name: str, kwargs) -> bool:
    """Whether the operation named ``name`` writes into its first argument (or ``out``)."""
    return "out" in kwargs or name == "__setitem__" or name.startswith("__i") or (
        name.endswith("_") and not name.startswith("__"))


def _same(tracker: _Tracker, args, kwargs):
    return tracker.kind(args[0])


def _sum(tracker: _Tracker, args, kwargs):
    a, b = (tracker.kind(x) for x in args[:2])
    if a is None or b is None or a[1] != 1.0 or b[1] != 1.0 or "alpha" in kwargs:
        return None
    return a[0] + b[0], 1.0


def _times(tracker: _Tracker, args, kwargs):
    tensor, number = (args[0], args[1]) if isinstance(args[0], torch.Tensor) else (args[1], args[0])
    found = tracker.kind(tensor)
    if found is None or found[1] != 1.0 or isinstance(number, bool) or not isinstance(number, (int, float)) \
            or not number > 0:
        return None
    return found[0], float(number)


def _product(tracker: _Tracker, args, kwargs):
    a, b = (tracker.kind(x) for x in args[:2])
    if a is None or b is None or a[1] != 1.0 or b[1] != 1.0:
        return None
    return a[0] * b[0] * args[0].shape[-1], 1.0


_RULES = {**dict.fromkeys(("contiguous", "clone", "reshape", "flatten", "unflatten", "view", "transpose", "permute",
                           "squeeze", "unsqueeze", "expand", "__getitem__", "detach", "max_pool2d"), _same),
          **dict.fromkeys(("add", "__add__", "__radd__"), _sum),
          **dict.fromkeys(("mul", "__mul__", "__rmul__"), _times),
          **dict.fromkeys(("matmul", "__matmul__", "bmm"), _product)}
"""Operations (by name) whose output holds spikes or counts when their inputs do, and how to bound it."""


def _enter_model(model: nn.Module, args) -> None:
    if _tracker() is not None or not _active():
        return
    tracker = _Tracker()
    saving = _saving_hooks(tracker.code)
    tracker.__enter__()
    saving.__enter__()
    _state.tracker, _state.tracker_owner, _state.saving = tracker, model, saving


def _leave_model(model: nn.Module, args, out) -> None:
    if _tracker() is None or getattr(_state, "tracker_owner", None) is not model:
        return
    _state.saving.__exit__(None, None, None)
    _state.tracker.__exit__(None, None, None)
    _state.tracker = _state.tracker_owner = _state.saving = None


def _after_batch_norm(bn: nn.Module, args, out) -> None:
    tracker = _tracker()
    if tracker is not None and isinstance(out, torch.Tensor):
        tracker.last_bn = (bn, args[0], weakref.ref(out))  # the input: BatchNorm keeps it for backward anyway


def _before_lif(lif: nn.Module, args) -> None:
    tracker = _tracker()
    if tracker is None or tracker.last_bn is None:
        return
    bn, z, normed = tracker.last_bn[0], tracker.last_bn[1], tracker.last_bn[2]()
    tracker.last_bn = None
    y = args[0]  # the BatchNorm output itself, or a view of all of it (a view keeps its base alive)
    if normed is None or not isinstance(y, torch.Tensor) or not (y is normed or y._base is normed) \
            or y.numel() != normed.numel() or not y.is_contiguous():
        return
    saving = _recomputing(z, bn, lif, y)
    saving.__enter__()
    tracker.recomputing.append((lif, saving))


def _after_lif(lif: nn.Module, args, out) -> None:
    tracker = _tracker()
    if tracker is None:
        return
    if tracker.recomputing and tracker.recomputing[-1][0] is lif:
        tracker.recomputing.pop()[1].__exit__(None, None, None)
    tracker.mark(out, 1, 1.0)


def pack(model: nn.Module) -> nn.Module:
    """Apply this module's savings to ``model`` (in place; returns it): in its forward with gradients, tensors
    saved for backward that hold spikes are kept as ``bool``, sums and products of spikes (whole numbers up to
    255, or a positive number times them) as ``uint8``; a BatchNorm -> :class:`LIF` pair keeps no potentials
    (recomputed, :func:`batch_norm_lif`), and every ``nn.MaxPool2d`` becomes a :class:`CompactMaxPool2d`.
    Outputs, gradients, state dicts and module calls (hooks, running statistics) stay exactly as they were;
    ``float_saves()`` turns it off for a block. :class:`~spiketwin.train.TrainConfig` applies it by default."""
    for module in model.modules():
        if getattr(module, "_spiketwin_packed", False):
            continue
        if type(module) is nn.MaxPool2d and not module.return_indices:
            module.__class__ = CompactMaxPool2d
        elif type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            module.register_forward_hook(_after_batch_norm)
        elif type(module) in (LIF, IF):
            module.register_forward_pre_hook(_before_lif)
            module.register_forward_hook(_after_lif, always_call=True)
        module._spiketwin_packed = True
    if not getattr(model, "_spiketwin_root", False):
        model.register_forward_pre_hook(_enter_model)
        model.register_forward_hook(_leave_model, always_call=True)
        model._spiketwin_root = True
    return model
