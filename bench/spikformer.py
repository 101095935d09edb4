"""Spikformer-4-384 (CIFAR-10) training step: spiketwin versus SpikingJelly, each side in its own process.

    python -m bench.spikformer [--batch 8] [--T 4] [--repeats 5] [--rounds 3] [--threads N]

One training step = forward on ``[B, 3, 32, 32]`` images repeated T times, cross-entropy, backward, AdamW step.
Each side runs in a fresh subprocess and reports the median step time and its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), both in total and above the process's resident memory just
before the first step (imports and weights excluded). The sides take turns for ``--rounds`` rounds (a fresh
process each time) and the table shows the median over rounds, so a change in machine load hits every side
alike; the CPU seconds of the process per step are shown beside the wall time. Sides:

- ``spiketwin``: ``spiketwin.models.create("spikformer_cifar10")``.
- ``sj-official``: the official Spikformer code's architecture (ZK-Zhou/spikformer ``cifar10/model.py``: Linear with
  bias, BN1d on transposed tokens, pooling on spikes, unused LayerNorms) written with SpikingJelly 2.0's
  ``neuron.LIFNode`` and ``layer.SeqToANNContainer``: the same model as ours.
- ``sj-builtin``: SpikingJelly 2.0's own ``model.spikformer.spikformer_cifar10`` (a different variant: see
  ``docs/spikformer.md``).

SpikingJelly sides are skipped with a note when ``spikingjelly`` cannot be imported
(``pip install spikingjelly --no-deps`` plus ``loguru scipy h5py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
from torch import nn

import statistics
import time

from bench.common import median_seconds, print_table

SIDES = ("spiketwin", "sj-official", "sj-builtin")


def official_with_spikingjelly(T: int, num_classes: int = 10) -> nn.Module:
    """The official CIFAR Spikformer-4-384, layer for layer, on SpikingJelly's LIF neuron and containers."""
    from spikingjelly.activation_based import layer, neuron

    def lif(v_threshold: float = 1.0) -> nn.Module:
        return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")

    def conv_bn(cin: int, cout: int) -> nn.Module:
        return layer.SeqToANNContainer(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

    class TokenLinearBN(nn.Module):  # the official [T*B, N, C] Linear, BN1d over the transposed tokens
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.linear, self.bn = nn.Linear(cin, cout), nn.BatchNorm1d(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            T, B, N, _ = x.shape
            y = self.linear(x.flatten(0, 1))
            return self.bn(y.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, -1).contiguous()

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.proj = (TokenLinearBN(dim, dim) for _ in range(4))
            self.q_lif, self.k_lif, self.v_lif, self.proj_lif = (lif() for _ in range(4))
            self.attn_lif = lif(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            T, B, N, C = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(T, B, N, self.heads, C // self.heads).permute(0, 1, 3, 2, 4).contiguous()

            q, k, v = split(self.q_lif(self.q(x))), split(self.k_lif(self.k(x))), split(self.v_lif(self.v(x)))
            y = (q @ k.transpose(-2, -1)) * 0.125 @ v
            y = self.attn_lif(y.transpose(2, 3).reshape(T, B, N, C).contiguous())
            return self.proj_lif(self.proj(y))

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)  # unused, as in the official code
            self.attn = Attention(dim, heads)
            self.fc1, self.fc1_lif = TokenLinearBN(dim, 4 * dim), lif()
            self.fc2, self.fc2_lif = TokenLinearBN(4 * dim, dim), lif()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(x)
            return x + self.fc2_lif(self.fc2(self.fc1_lif(self.fc1(x))))

    class Model(nn.Module):
        def __init__(self, dim: int = 384, depth: int = 4, heads: int = 12) -> None:
            super().__init__()
            chans = [3, dim // 8, dim // 4, dim // 2, dim]
            self.stages = nn.ModuleList(conv_bn(chans[i], chans[i + 1]) for i in range(4))
            self.lifs = nn.ModuleList(lif() for _ in range(5))
            self.pool = layer.SeqToANNContainer(nn.MaxPool2d(3, 2, 1))
            self.rpe = conv_bn(dim, dim)
            self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
            self.head = nn.Linear(dim, num_classes)

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            x = img.unsqueeze(0).repeat(T, 1, 1, 1, 1)
            for i, stage in enumerate(self.stages):
                x = self.lifs[i](stage(x))
                if i >= 2:
                    x = self.pool(x)
            x = x + self.lifs[4](self.rpe(x))
            x = x.flatten(-2).transpose(-1, -2)
            for blk in self.blocks:
                x = blk(x)
            return self.head(x.mean(2).mean(0))

    return Model()


def build(side: str, T: int) -> tuple[nn.Module, callable]:
    """The model of ``side`` and its state-reset function."""
    if side == "spiketwin":
        from spiketwin import reset
        from spiketwin.models import create
        return create("spikformer_cifar10", T=T), reset
    from spikingjelly.activation_based import functional
    if side == "sj-official":
        return official_with_spikingjelly(T), functional.reset_net
    from spikingjelly.activation_based.model.spikformer import spikformer_cifar10

    class MeanOverTime(nn.Module):  # SpikingJelly's model returns per-step logits [T, B, classes]
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).mean(0)

    return MeanOverTime(spikformer_cifar10(T=T)), functional.reset_net


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(side: str, batch: int, T: int, repeats: int) -> dict:
    """Median training-step seconds and peak memory of one side, in this process."""
    torch.manual_seed(0)
    model, reset = build(side, T)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    before = current_rss_bytes()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reset(model)

    cpu_start = time.process_time()
    seconds = median_seconds(step, repeats, warmup=2)
    cpu = (time.process_time() - cpu_start) / (repeats + 2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"side": side, "params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
            "cpu_seconds": cpu, "peak_rss": peak, "before_rss": before}


def run_side(side: str, args: argparse.Namespace) -> dict | str:
    cmd = [sys.executable, "-m", "bench.spikformer", "--side", side, "--batch", str(args.batch), "--T", str(args.T),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns of all sides, each in a fresh process")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(measure(args.side, args.batch, args.T, args.repeats)))
        return
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    notes = {}
    for _ in range(args.rounds):
        for side in SIDES:
            if side in notes:
                continue
            r = run_side(side, args)
            if isinstance(r, str):
                notes[side] = r
            else:
                runs[side].append(r)
    if not runs["spiketwin"]:
        raise SystemExit(f"spiketwin side failed: {notes.get('spiketwin')}")
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu_seconds", "peak_rss",
                                                                     "before_rss")} | {"params": rs[0]["params"]}
           for side, rs in runs.items() if rs}
    ours = med["spiketwin"]
    rows = []
    mb = 2**20
    for side, r in med.items():
        above, ours_above = r["peak_rss"] - r["before_rss"], ours["peak_rss"] - ours["before_rss"]
        rows.append([side, f"{r['params']:,}", r["seconds"] * 1e3, r["cpu_seconds"] * 1e3, r["peak_rss"] / mb,
                     above / mb, r["seconds"] / ours["seconds"], r["cpu_seconds"] / ours["cpu_seconds"],
                     1 - ours["peak_rss"] / r["peak_rss"], 1 - ours_above / above])
    print_table(f"Spikformer-4-384 training step (forward+backward+AdamW), B={args.batch} T={args.T}, CPU, "
                f"{args.threads} threads; per process the median of {args.repeats} steps, then the median of "
                f"{len(runs['spiketwin'])} rounds (one fresh process per side and round)",
                ["side", "params", "step ms", "CPU ms/step", "peak RSS MB", "peak above start MB",
                 "spiketwin speed-up (wall)", "(CPU)", "spiketwin peak RSS saving", "(above start)"], rows)
    for side, note in notes.items():
        print(f"  {side}: not measured ({note})")


if __name__ == "__main__":
    main()
