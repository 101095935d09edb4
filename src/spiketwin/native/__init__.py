"""Optional native CPU kernels: loops that torch would run as many elementwise passes, fused into one.

Each kernel is a C file in this folder (no torch headers: plain pointers and sizes). On first use it is
compiled by the system C compiler (``$CC``, else ``cc``) into a shared library cached under
``$SPIKETWIN_CACHE`` (default ``~/.cache/spiketwin``), keyed by the source, the compiler and its flags, and
called through :mod:`ctypes` on contiguous CPU tensors. The call releases the GIL.

Callers keep their torch path and take it whenever :func:`library` returns ``None``: no compiler, a failed
build, ``SPIKETWIN_NATIVE=0`` in the environment, or tensors a kernel does not take (CUDA, other dtypes,
autograd). Both paths give bit-identical results (tests compare them); :func:`status` says which runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..utils import cache_dir

SOURCE_DIR = Path(__file__).resolve().parent
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")
"""``-ffp-contract=off``: no fused multiply-add, so every operation rounds as torch's does (bit-identical
results); the two others only let ``floor`` and compares vectorise (no errno, no trap semantics)."""

_loaded: dict[str, ctypes.CDLL | None] = {}
_errors: dict[str, str] = {}


_disabled = 0  # depth of nested ``disabled()`` blocks


def enabled() -> bool:
    """False inside :func:`disabled` or when the environment variable ``SPIKETWIN_NATIVE`` is ``0``."""
    return _disabled == 0 and os.environ.get("SPIKETWIN_NATIVE", "1") != "0"


@contextlib.contextmanager
def disabled():
    """Within the block every caller takes its torch path (to compare both paths in one process)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _build(name: str, compiler: str) -> Path:
    """Compile ``name.c`` (and the shared header) once per source/compiler/flags; returns the library path.
    Written atomically: a concurrent build by another process writes its own temporary file."""
    sources = [SOURCE_DIR / f"{name}.c", SOURCE_DIR / "kernel.h"]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([*(s.read_text() for s in sources), compiler, version, *FLAGS,
                                    sys.platform]).encode()).hexdigest()[:16]
    target = cache_dir("native") / f"{name}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-I", str(SOURCE_DIR), "-o", tmp, str(sources[0]), "-lm"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed on {sources[0].name}: {done.stderr.strip()[:2000]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def library(name: str) -> ctypes.CDLL | None:
    """The compiled kernel library ``name`` (``name.c`` in this folder), or ``None`` when native kernels are
    off or cannot be built (the reason is in :func:`status`). Built at most once per process."""
    if not enabled():
        return None
    if name not in _loaded:
        compiler = _compiler()
        try:
            if compiler is None:
                raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
            _loaded[name] = ctypes.CDLL(str(_build(name, compiler)))
        except OSError as error:  # build or load failure: the torch path runs instead
            _loaded[name] = None
            _errors[name] = str(error)
    return _loaded[name]


REAL = float
"""Marks, in :func:`function`'s argument types, a scalar of the tensors' dtype (``float`` or ``double`` in C)."""
_C_REAL = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def function(name: str, symbol: str, dtype: torch.dtype, *argtypes) -> Callable | None:
    """The ``dtype`` variant (``symbol_f32`` / ``symbol_f64``) of function ``symbol`` of kernel library ``name``,
    with its ctypes argument types (:data:`REAL` for a scalar of ``dtype``), or ``None`` (see :func:`library`;
    also for a dtype without a variant). Pointers are passed as ``ctypes.c_void_p`` (:func:`pointer`)."""
    if not enabled() or dtype not in _SUFFIX:
        return None
    return _function(name, symbol, dtype, argtypes)


@functools.cache
def _function(name: str, symbol: str, dtype: torch.dtype, argtypes: tuple) -> Callable | None:
    lib = library(name)
    if lib is None:
        return None
    fn = getattr(lib, f"{symbol}_{_SUFFIX[dtype]}")
    fn.argtypes, fn.restype = [_C_REAL[dtype] if t is REAL else t for t in argtypes], None
    return fn


def status(name: str) -> str:
    """One line for reports: whether kernel library ``name`` is in use, and why not if it is not."""
    if not enabled():
        return f"{name}: off (SPIKETWIN_NATIVE=0), torch path"
    if library(name) is not None:
        return f"{name}: native C kernel"
    return f"{name}: torch path ({_errors.get(name, 'unavailable')})"


def pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    """The data address of a contiguous CPU tensor, for a kernel argument."""
    return ctypes.c_void_p(tensor.data_ptr())


def takes(*tensors: torch.Tensor) -> bool:
    """Whether kernels can run on these tensors: CPU, float32 or float64 (all alike), contiguous, no autograd."""
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in _C_REAL
            and not torch.is_grad_enabled()
            and all(t.device == first.device and t.dtype == first.dtype and t.is_contiguous() for t in tensors))
