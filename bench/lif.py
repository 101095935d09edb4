"""LIF forward+backward on [T=4, B=64, 24576]: fused sequence scan versus a per-step Python loop.

    python -m bench.lif [--device cuda]

Where a fused kernel runs, a third row calls the same kernels straight from an autograd function (how they were
called before they became the ``spiketwin::lif_scan`` operator): the operator's dispatch cost. The rows take turns
(``round_robin``), so load changes hit them alike.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import print_table, round_robin
from spiketwin.kernels import lif as lif_ops
from spiketwin.neurons import LIF, LIFParams, lif_step
from spiketwin.neurons.lif import _charge_grads, _scalars, lif_mode
from spiketwin.surrogate import Sigmoid


def per_step_loop(x: torch.Tensor) -> torch.Tensor:
    """The usual way: call the neuron's step function once per time step, autograd records everything."""
    p, sg = LIFParams(), Sigmoid(4.0)
    v = torch.zeros_like(x[0])
    out = []
    for xt in x:
        s, v = lif_step(xt, v, p, sg)
        out.append(s)
    return torch.stack(out)


def fused_sequence(x: torch.Tensor) -> torch.Tensor:
    return LIF(step_mode="m")(x)


class _DirectKernels(torch.autograd.Function):
    """The default LIF's fused kernels called from a plain autograd function, without the operator."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        p = LIFParams()
        h, spikes, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x[0])
        lif_ops.launch_forward(x, torch.zeros_like(x[0]), h, spikes, v, lif_mode(p), *_scalars(p))
        ctx.save_for_backward(h)
        return spikes

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors
        p = LIFParams()
        grad_x, grad_v0 = torch.empty_like(h), torch.empty_like(h[0])
        lif_ops.launch_backward(h, grad.contiguous(), None, grad_x, grad_v0, lif_mode(p), lif_ops.SIGMOID,
                                p.v_threshold, 0.0, *_charge_grads(p), 4.0)
        return grad_x


def forward_backward(fn, x: torch.Tensor, grad: torch.Tensor):
    def run():
        x.grad = None
        fn(x).backward(grad)
    return run


def peak_saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (tensors saved by the graph), measured with saved-tensor hooks."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    shape = (4, 64, 24576)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) + 0.5).to(args.device).requires_grad_()
    grad = torch.randn(shape, generator=g).to(args.device)
    with torch.no_grad():
        assert torch.equal(per_step_loop(x), fused_sequence(x))
    paths = [("per-step Python loop", per_step_loop), ("fused sequence scan", fused_sequence)]
    if lif_ops.runs_on(x):
        paths.append(("  same kernels, no operator", _DirectKernels.apply))
        with torch.no_grad():
            assert torch.equal(_DirectKernels.apply(x), fused_sequence(x))
    timings = round_robin([forward_backward(fn, x, grad) for _, fn in paths], args.repeats, warmup=2)
    t_loop = timings[0].seconds
    print_table(
        f"LIF forward+backward, T=4 B=64 N=24576, {args.device}, median of {args.repeats}, in turns",
        ["path", "time ms", "saved for backward MB", "speed-up"],
        [[name, t.seconds * 1e3, peak_saved_bytes(fn, x) / 2**20, t_loop / t.seconds]
         for (name, fn), t in zip(paths, timings)],
    )
    print(f"  fused scan: {lif_ops.status()}")


if __name__ == "__main__":
    main()
