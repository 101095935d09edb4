"""Memory for backward: spikes that autograd saves are kept as ``bool`` (1 byte) instead of float (4 bytes).

A layer fed with spikes (a convolution, a linear layer, a max pool, a product of spike matrices) saves its input
for backward. Inside :func:`spikes_saved_as_bool` ``(s1, s2, ...)``, every tensor autograd saves that lives in
the storage of one of the given spike tensors is packed as ``bool`` and unpacked back to its float dtype when
backward needs it: exact (spikes are 0 or 1), a quarter of the memory. The given tensors must hold only 0 and 1;
they are alive during the block, so their storage cannot be mistaken for another tensor's.

:func:`float_saves` turns the packing off (to compare memory, or to check that gradients are identical).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_state = threading.local()


def _enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def float_saves() -> Iterator[None]:
    """Within this block :func:`spikes_saved_as_bool` does nothing: spikes are saved as they are."""
    before = _enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = before


@contextlib.contextmanager
def spikes_saved_as_bool(*spikes: torch.Tensor) -> Iterator[None]:
    """Pack tensors saved for backward inside this block as ``bool`` when they share storage with ``spikes``."""
    if not _enabled() or not torch.is_grad_enabled():
        yield
        return
    storages = {s.untyped_storage().data_ptr() for s in spikes}

    def pack(t: torch.Tensor):
        if t.is_floating_point() and t.untyped_storage().data_ptr() in storages:
            return t.to(torch.bool), t.dtype
        return t

    def unpack(packed):
        if isinstance(packed, tuple):
            return packed[0].to(packed[1])
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
