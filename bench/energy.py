"""Cost of an energy report: ``energy.report(model, x)`` and ``energy.compare`` under every convention versus the
plain forward they instrument.

    python -m bench.energy [--device cuda] [--batch 64] [--repeats 5]

The report adds forward hooks that count non-zero inputs per step on the device (one host transfer at
the end) and, for activation products, one extra matmul of the operands' non-zero masks. ``compare`` collects
once for all six presets: value tests (extremes, integers, sums), exact convolution uses and the extra layers.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import median_seconds, print_table
from spiketwin import reset
from spiketwin.energy import compare, report
from spiketwin.models import create

MODELS = {
    "scnn (digits, T=4)": ("scnn", {}, (1, 8, 8)),
    "spikformer 1-64 (digits, T=4)": ("spikformer_cifar10", dict(img_size=8, in_channels=1, dim=64, depth=1,
                                                                  num_heads=4, T=4, pool_after=(0,)), (1, 8, 8)),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for label, (name, overrides, shape) in MODELS.items():
        model = create(name, **overrides).to(args.device).eval()
        x = torch.rand(args.batch, *shape, device=args.device)

        def forward(model=model, x=x):
            with torch.no_grad():
                model(x)
            reset(model)

        t_forward = median_seconds(forward, args.repeats, warmup=1)
        t_report = median_seconds(lambda model=model, x=x: report(model, x), args.repeats, warmup=1)
        t_all = median_seconds(lambda model=model, x=x: compare(model, x), args.repeats, warmup=1)
        rows.append([label, t_forward * 1e3, t_report * 1e3, t_all * 1e3, t_report / t_forward,
                     t_all / t_forward])
    print_table(f"energy.report / compare (6 conventions) vs forward, batch {args.batch}, {args.device}, "
                f"median of {args.repeats}",
                ["model", "forward ms", "report ms", "compare ms", "report / forward", "compare / forward"], rows)


if __name__ == "__main__":
    main()
