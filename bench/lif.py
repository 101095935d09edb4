"""LIF forward+backward on [T=4, B=64, 24576]: fused sequence scan versus a per-step Python loop.

    python -m bench.lif [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import median_seconds, print_table
from spiketwin.native import lif_ops
from spiketwin.neurons import LIF, LIFParams, lif_step
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
    t_loop = median_seconds(forward_backward(per_step_loop, x, grad), args.repeats)
    t_fused = median_seconds(forward_backward(fused_sequence, x, grad), args.repeats)
    m_loop, m_fused = peak_saved_bytes(per_step_loop, x), peak_saved_bytes(fused_sequence, x)
    print_table(
        f"LIF forward+backward, T=4 B=64 N=24576, {args.device}, median of {args.repeats}",
        ["path", "time ms", "saved for backward MB", "speed-up"],
        [["per-step Python loop", t_loop * 1e3, m_loop / 2**20, 1.0],
         ["fused sequence scan", t_fused * 1e3, m_fused / 2**20, t_loop / t_fused]],
    )
    print(f"  fused scan: {lif_ops.status()}")


if __name__ == "__main__":
    main()
