"""A stand-in CUDA device for machines without one: tensors that hold CPU memory and say they are on ``cuda:0``.

Inside ``with stand_in_cuda() as reads:`` ``tensor.to("cuda")``, ``module.to("cuda")`` and factories with
``device="cuda"`` give :class:`StandIn` tensors, whose ``device`` is ``cuda:0`` and ``is_cuda`` True, so spiketwin
takes its CUDA branches (the chunked settle check, the custom operators' CUDA implementations and their Triton
kernels, which run in Triton's interpreter on the CPU memory, ``TRITON_INTERPRET=1`` as set by ``conftest.py``).
Every operation on them runs on the CPU. What it checks that a CPU run cannot:

- device placement: an operation mixing a stand-in with a CPU tensor of one or more dimensions raises
  :class:`DeviceMismatch` (as CUDA would; a 0-dimensional CPU tensor is allowed, as CUDA allows it);
- host reads: ``reads`` lists every read a GPU would wait for (``item`` / ``bool`` / ``int`` / ``float``,
  ``tolist``, ``nonzero``, boolean-mask selection and indexing, ``equal``, a blocking copy to the CPU), each with
  the spiketwin source line that made it;
- the CUDA registrations of spiketwin's operators and the Triton kernels, called as on a GPU.

What it cannot check: the GPU's own arithmetic (cuBLAS, cuDNN, compiled Triton code: ``tests/test_kernels_compile.py``
reads the compiled kernels' instructions), timing, streams. ``torch.cuda.Event`` / ``current_stream`` /
``current_device`` / ``device`` are stand-ins too (the host copy of ``read_late`` and the launch context of the
Triton kernels). Tracing a model
that sits on the stand-in (``torch.export``, so ``to_qann``) aborts the process inside PyTorch's fake tensors, which
need a CUDA build for a cuda tensor that requires gradients: convert on the CPU, then move.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

CUDA = torch.device("cuda", 0)
_SYNCHRONISING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                  torch.ops.aten.masked_select.default, torch.ops.aten.equal.default,
                  torch.ops.aten.is_nonzero.default}
"""Operators whose CUDA implementations wait for the device: they return host values or a size known only there."""
_ACROSS_DEVICES = {torch.ops.aten.copy_.default, torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                   torch.ops.aten._index_put_impl_.default}
"""Operators CUDA lets take CPU tensors beside cuda ones: a copy between devices, CPU index tensors."""


class DeviceMismatch(RuntimeError):
    """A stand-in CUDA tensor met a CPU tensor in one operation."""


class Reads(list):
    """The host reads made so far, as ``(what, "file.py:line (function)")`` of the innermost spiketwin frame."""

    def note(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/spiketwin/" in f.filename]
        where = "?"
        if frames:
            where = f"{frames[-1].filename.rsplit('/spiketwin/', 1)[-1]}:{frames[-1].lineno} ({frames[-1].name})"
        self.append((what, where))


_reads = Reads()
_triton = [True]


class StandIn(torch.Tensor):
    """CPU memory that reports ``cuda:0``."""

    @property
    def device(self) -> torch.device:
        return CUDA

    @property
    def is_cuda(self) -> bool:
        return True

    def get_device(self) -> int:
        return 0

    def __repr__(self, **kwargs) -> str:
        return f"{_plain(self)!r} (stand-in cuda:0)"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "numpy":
            raise TypeError("can't convert cuda:0 device type tensor to numpy (stand-in CUDA)")
        if name == "tolist":
            _reads.note("tolist")
            return _plain(args[0]).tolist()
        if name in ("cpu", "to", "cuda"):
            target = _target(func, args, kwargs)
            if target is not None and target.type == "cpu":
                if not kwargs.get("non_blocking"):
                    _reads.note("copy to the host")
                with torch._C.DisableTorchFunctionSubclass():
                    return _plain(func(*args, **kwargs)).clone()
            if target is not None and target.type == "cuda":  # already there: what else the call asks (a dtype)
                rest = [a for a in args[1:] if not isinstance(a, (str, torch.device, torch.Tensor))]
                with torch._C.DisableTorchFunctionSubclass():
                    return torch.Tensor.to(args[0], *rest, **{k: v for k, v in kwargs.items() if k != "device"})
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _target(func, args, kwargs) -> torch.device | None:
    """The device a ``Tensor.to`` / ``cpu`` / ``cuda`` call moves to (None: it moves nothing)."""
    if func.__name__ in ("cpu", "cuda"):
        return torch.device(func.__name__)
    target = kwargs.get("device")
    if target is None:
        target = next((a.device if isinstance(a, torch.Tensor) else a for a in args[1:]
                       if isinstance(a, (str, torch.device, torch.Tensor))), None)
    return None if target is None else torch.device(target)


def _cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _plain(t):
    if not isinstance(t, StandIn):
        return t
    with torch._C._DisableTorchDispatch():
        return t.as_subclass(torch.Tensor)


def _stand_in(t):
    if not isinstance(t, torch.Tensor) or isinstance(t, StandIn):
        return t
    with torch._C._DisableTorchDispatch():
        return t.as_subclass(StandIn)


def _run(func, args, kwargs):
    leaves = tree_leaves((args, kwargs))
    on_device = any(isinstance(t, StandIn) for t in leaves)
    if on_device and func not in _ACROSS_DEVICES:
        for t in leaves:
            if isinstance(t, torch.Tensor) and not isinstance(t, StandIn) and t.dim() > 0:
                raise DeviceMismatch(f"{func}: a CPU tensor of shape {tuple(t.shape)} beside cuda tensors")
    if on_device and func in _SYNCHRONISING:
        _reads.note(str(func))
    if on_device and func in _ACROSS_DEVICES and func is not torch.ops.aten.copy_.default \
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1])):
        _reads.note(f"{func} with a boolean mask")  # its size is known only after a nonzero on the device
    device = kwargs.get("device")
    if _cuda(device):
        kwargs = {**kwargs, "device": torch.device("cpu")}
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
    to_host = device is not None and torch.device(device).type == "cpu"
    if on_device and to_host and func is torch.ops.aten._to_copy.default and not kwargs.get("non_blocking"):
        _reads.note("copy to the host")
    if on_device and _triton[0] and func.namespace == "spiketwin":  # the operator's CUDA implementation
        with _Dispatch():  # its own factory calls with device="cuda"
            return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args, **kwargs)
    plain_args, plain_kwargs = tree_map(_plain, args), tree_map(_plain, kwargs)
    out = func(*plain_args, **plain_kwargs)
    if on_device and func._schema.is_mutable:
        _follow((args, kwargs), (plain_args, plain_kwargs))
        returns = func._schema.returns
        if len(returns) == 1 and returns[0].alias_info is not None and returns[0].alias_info.is_write:
            return args[0]  # an in-place operator returns its tensor
    if to_host or not (on_device or _cuda(device)):
        return out
    return tree_map(_stand_in, out)


def _follow(stand_ins, plain) -> None:
    """After an in-place operator: the shape, strides and storage that it gave the plain views (``set_``,
    ``resize_``: Tensor.__deepcopy__ uses them) onto the stand-ins they were made of."""
    for t, p in zip(tree_leaves(stand_ins), tree_leaves(plain)):
        if isinstance(t, StandIn) and (t.shape, t.stride(), t.storage_offset(), t.untyped_storage().data_ptr()) != (
                p.shape, p.stride(), p.storage_offset(), p.untyped_storage().data_ptr()):
            with torch._C._DisableTorchDispatch():
                torch.Tensor.set_(t, p.untyped_storage(), p.storage_offset(), p.shape, p.stride())


class _Dispatch(TorchDispatchMode):
    """Factories with ``device="cuda"`` (no stand-in among their arguments) come here."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Moves(TorchFunctionMode):
    """``cpu_tensor.to("cuda")`` / ``.cuda()``, ``torch.tensor(data, device="cuda")`` (which copies to the device
    below the dispatcher's Python layer): a stand-in copy."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _cuda(kwargs.get("device")):
            return _stand_in(func(*args, **{**kwargs, "device": "cpu"}))
        if func in (torch.Tensor.to, torch.Tensor.cuda) and isinstance(args[0], torch.Tensor) \
                and not isinstance(args[0], StandIn) and _cuda(_target(func, args, kwargs)):
            t = args[0]
            dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), t.dtype))
            return _stand_in(t.detach().to(dtype, copy=True)).requires_grad_(t.requires_grad)
        return func(*args, **kwargs)


class _Event:
    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _DeviceContext(contextlib.nullcontext):
    def __init__(self, device) -> None:
        super().__init__()


@contextlib.contextmanager
def stand_in_cuda(triton: bool = True) -> Iterator[Reads]:
    """Within the block ``"cuda"`` is the stand-in device; yields the list of host reads. ``triton=False`` keeps
    spiketwin's CUDA code on its torch path (``spiketwin.kernels.triton_disabled``)."""
    from spiketwin.kernels import triton_disabled

    patched = {"_lazy_init": lambda: None, "Event": _Event, "current_stream": lambda device=None: None,
               "current_device": lambda: 0, "device": _DeviceContext}
    saved = {name: getattr(torch.cuda, name) for name in patched}
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    _reads.clear()
    _triton[0] = triton
    try:
        for name, value in patched.items():
            setattr(torch.cuda, name, value)
        torch.__future__.set_overwrite_module_params_on_conversion(True)  # module.to("cuda"): new parameters
        with contextlib.nullcontext() if triton else triton_disabled(), _Moves(), _Dispatch():
            yield _reads
    finally:
        for name, value in saved.items():
            setattr(torch.cuda, name, value)
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
