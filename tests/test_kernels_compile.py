"""The Triton kernels compile for real GPUs, with the arithmetic that the bit-for-bit tests assume.

Triton's interpreter, in which ``tests/test_kernels.py`` and ``tests/test_lif_triton.py`` run the kernels, accepts
code that does not compile (plain Python globals in a kernel; a float64 ``fdiv(ieee_rounding=True)`` in Triton 3.9:
both were here, and neither had ever run on a GPU) and says nothing of the instructions a GPU would run (Triton divides
float32 approximately and contracts ``a * b + c`` into one fused multiply-add unless told not to). So every kernel
variant that spiketwin launches is compiled to machine code for compute capability 8.0 (A100) and 9.0 (H100 / H200)
by ``tests/triton_ptx.py``, in a process without the interpreter, and its floating-point instructions are read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton): the Triton kernels are untested")
HERE = Path(__file__).resolve().parent
KERNELS = {"_stbif_steps", "_stbif_exact_step", "_lif_forward", "_lif_backward"}


@pytest.fixture(scope="module", params=[80, 90], ids=["sm80", "sm90"])
def compiled(request, tmp_path_factory) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))  # compile every time
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(HERE / "triton_ptx.py"), str(request.param)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout)
    assert {r["arch"] for r in results["compiled"]} == {request.param}
    assert results["kernels"] == sorted(KERNELS), "a kernel that tests/triton_ptx.py does not launch"
    return results["compiled"]


def test_every_kernel_variant_spiketwin_launches_compiles(compiled):
    # float32 and float64: 2 + 3 ST-BIF (skip or not; int8/16/32 counts) for samples of one block and of two, 8 LIF
    # modes x 3 outputs forward, x 4 backward; float16 and bfloat16: the exact step's 3 counts, one block and two
    assert {r["kernel"] for r in compiled} == KERNELS and len(compiled) == 2 * (2 * (2 + 3) + 8 * 3 + 8 * 4) + 2 * 2 * 3


def test_division_rounds_to_nearest_and_nothing_is_approximate(compiled):
    for r in compiled:
        assert all(op.startswith("div.rn.") for op in r["ops"] if op.startswith(("div", "rcp"))), r
        assert not [op for op in r["ops"] if ".approx" in op or ".full" in op], r


def test_only_the_lif_backward_fuses_a_multiply_add_where_torch_rounds_once(compiled):
    """``tl.fma`` where torch's ``addcmul_`` rounds once; every other product and sum carries ``.rn``, which PTX
    never contracts (a plain ``mul.f32`` / ``add.f32`` pair may become one ``fma`` in ``ptxas``)."""
    for r in compiled:
        assert any(op.startswith("fma") for op in r["ops"]) == (r["kernel"] == "_lif_backward"), r
        assert all(".rn" in op for op in r["ops"] if op.split(".")[0] in ("add", "sub", "mul")), r


def test_subnormals_are_flushed_only_by_the_floor_of_a_rounding(compiled):
    """Triton's ``floor`` is ``cvt.rmi.ftz``; the ST-BIF rounding takes the floor of ``x / θ + 0.5``, which is 0 or at
    least 2^-25 in magnitude (the float32 spacing near 0.5), never subnormal, so flushing changes nothing there."""
    for r in compiled:
        assert all(op.startswith("cvt.rmi.ftz") for op in r["ops"] if ".ftz" in op), r
        assert not any(".ftz" in op for op in r["ops"]) or r["kernel"].startswith("_stbif"), r
