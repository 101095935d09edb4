"""Spikformer-4-384 (CIFAR-10) training step: spiketwin versus SpikingJelly, time and peak memory.

    python -m bench.spikformer [--batch 8] [--T 4] [--repeats 5] [--rounds 3] [--threads N] [--saved] [--torch-path]

One training step = forward on ``[B, 3, 32, 32]`` images repeated T times, cross-entropy, backward, AdamW step.

- Memory: each side runs ``--repeats`` steps alone in a fresh subprocess and reports its peak resident memory
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), in total and above the process's resident memory just before
  the first step (imports and weights excluded); the sides take turns for ``--rounds`` rounds and the table
  shows the median over rounds.
- Time: one more subprocess builds every side and runs one step of each in turn, ``repeats x rounds`` times
  after two warm-up steps each; the table shows the median wall and CPU (process) time per step. Taking turns
  step by step makes a change in machine load hit every side alike.
- ``--saved``: what each side keeps for backward after one forward, by module kind and dtype (no timing).
- ``--torch-path``: one more side, ``spiketwin-torch``: the same model with ``SPIKETWIN_NATIVE=0`` during its steps
  (the torch paths instead of the native kernels of ``spiketwin.native``).

Sides:

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
import importlib.util
import json
import os
import resource
import subprocess
import sys

import torch
from torch import nn

import statistics

from bench.common import print_table, round_robin

SIDES = ("spiketwin", "spiketwin-torch", "sj-official", "sj-builtin")


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
    if side in ("spiketwin", "spiketwin-torch"):
        from spiketwin import reset
        from spiketwin.memory import pack
        from spiketwin.models import create
        return pack(create("spikformer_cifar10", T=T)), reset  # the savings fit() applies by default
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


def training_step(side: str, batch: int, T: int) -> tuple[nn.Module, callable]:
    """The model of ``side`` (seed 0) and one training step on a fixed batch: forward, loss, backward, AdamW."""
    torch.manual_seed(0)
    model, reset = build(side, T)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reset(model)

    def torch_path_step() -> None:
        from spiketwin import native  # imported per side, as in build()

        with native.disabled():  # as SPIKETWIN_NATIVE=0 would
            step()
    return model, torch_path_step if side == "spiketwin-torch" else step


def measure_memory(side: str, batch: int, T: int, repeats: int) -> dict:
    """Peak resident memory of ``repeats`` training steps of one side, alone in this process."""
    model, step = training_step(side, batch, T)
    before = current_rss_bytes()
    for _ in range(repeats):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"side": side, "params": sum(p.numel() for p in model.parameters()), "peak_rss": peak,
            "before_rss": before}


def measure_time(sides: list[str], batch: int, T: int, steps: int) -> dict:
    """Median wall and CPU seconds per training step of every side, in one process, one step of each in turn."""
    runs = {side: training_step(side, batch, T)[1] for side in sides}
    timings = round_robin(list(runs.values()), steps, warmup=2)
    return {side: {"seconds": t.seconds, "cpu_seconds": t.cpu_seconds} for side, t in zip(runs, timings)}


def saved_breakdown(side: str, batch: int, T: int) -> dict[tuple[str, str], int]:
    """Bytes autograd keeps for backward after one forward of ``side``, by (innermost module class, dtype).

    Every saved tensor is counted once per storage, in the form it is kept in (after the packing hooks of
    ``spiketwin.memory``, which are wrapped here so that the count sees through them); parameters and buffers
    are not counted.
    """
    torch.manual_seed(0)
    model, _ = build(side, T)
    model.train()
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    stack: list[str] = []

    def leave(mod: nn.Module, args, out) -> None:
        stack.pop()

    for m in model.modules():
        m.register_forward_pre_hook(lambda mod, args: stack.append(type(mod).__name__))
        m.register_forward_hook(leave)
    seen: set[int] = set()
    total: dict[tuple[str, str], int] = {}

    def record(packed):
        t = packed[0] if isinstance(packed, tuple) else packed
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in own and ptr not in seen:
                seen.add(ptr)
                key = (stack[-1] if stack else "(top)", str(t.dtype).replace("torch.", ""))
                total[key] = total.get(key, 0) + t.untyped_storage().nbytes()
        return packed

    hooks = torch.autograd.graph.saved_tensors_hooks

    class Counting(hooks):  # whatever a library packs, count what it returns
        def __init__(self, pack, unpack) -> None:
            super().__init__(lambda t: record(pack(t)), unpack)

    x = torch.rand(batch, 3, 32, 32)
    torch.autograd.graph.saved_tensors_hooks = Counting
    try:
        with hooks(record, lambda t: t):
            model(x)
    finally:
        torch.autograd.graph.saved_tensors_hooks = hooks
    return total


def subprocess_json(args: argparse.Namespace, *extra: str) -> dict | str:
    cmd = [sys.executable, "-m", "bench.spikformer", "--batch", str(args.batch), "--T", str(args.T),
           "--repeats", str(args.repeats), "--threads", str(args.threads), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_saved(args: argparse.Namespace, sides: list[str]) -> None:
    from spiketwin.memory import float_saves

    mb = 2**20
    columns = {}
    for side in sides:
        columns[side] = saved_breakdown(side, args.batch, args.T)
        if side == "spiketwin":
            with float_saves():
                columns["spiketwin (float_saves)"] = saved_breakdown(side, args.batch, args.T)
    keys = sorted({k for c in columns.values() for k in c}, key=lambda k: -max(c.get(k, 0) for c in columns.values()))
    rows = [[f"{kind} {dtype}"] + [c.get((kind, dtype), 0) / mb for c in columns.values()] for kind, dtype in keys]
    rows.append(["total"] + [sum(c.values()) / mb for c in columns.values()])
    print_table(f"Saved for backward after one forward (MB), B={args.batch} T={args.T}, by the innermost module "
                f"running when the tensor was saved, and its stored dtype", ["module, dtype", *columns], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="steps per memory process (after none)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of all sides, each in a fresh process")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--saved", action="store_true", help="print what each side keeps for backward, and exit")
    parser.add_argument("--torch-path", action="store_true", help="also time spiketwin with SPIKETWIN_NATIVE=0")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--timing", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(measure_memory(args.side, args.batch, args.T, args.repeats)))
        return
    if args.timing:
        print(json.dumps(measure_time(args.timing.split(","), args.batch, args.T, args.repeats * args.rounds)))
        return
    if args.saved:
        print_saved(args, [side for side in ("spiketwin", "sj-official", "sj-builtin")
                           if side == "spiketwin" or importlib.util.find_spec("spikingjelly")])
        return
    sides = [side for side in SIDES if args.torch_path or side != "spiketwin-torch"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    notes = {}
    for _ in range(args.rounds):
        for side in sides:
            if side in notes:
                continue
            r = subprocess_json(args, "--side", side)
            if isinstance(r, str):
                notes[side] = r
            else:
                runs[side].append(r)
    if not runs["spiketwin"]:
        raise SystemExit(f"spiketwin side failed: {notes.get('spiketwin')}")
    timed = [side for side in sides if runs[side]]
    times = subprocess_json(args, "--rounds", str(args.rounds), "--timing", ",".join(timed))
    if isinstance(times, str):
        raise SystemExit(f"timing run failed: {times}")
    med = {side: {k: statistics.median(r[k] for r in runs[side]) for k in ("peak_rss", "before_rss")}
           | {"params": runs[side][0]["params"]} | times[side] for side in timed}
    ours = med["spiketwin"]
    rows = []
    mb = 2**20
    for side, r in med.items():
        above, ours_above = r["peak_rss"] - r["before_rss"], ours["peak_rss"] - ours["before_rss"]
        rows.append([side, f"{r['params']:,}", r["seconds"] * 1e3, r["cpu_seconds"] * 1e3, r["peak_rss"] / mb,
                     above / mb, r["seconds"] / ours["seconds"], r["cpu_seconds"] / ours["cpu_seconds"],
                     1 - ours["peak_rss"] / r["peak_rss"], 1 - ours_above / above])
    print_table(f"Spikformer-4-384 training step (forward+backward+AdamW), B={args.batch} T={args.T}, CPU, "
                f"{args.threads} threads. Time: one process, one step of each side in turn, median of "
                f"{args.repeats * args.rounds} steps. Memory: {args.repeats} steps per fresh process, median of "
                f"{len(runs['spiketwin'])} rounds", ["side", "params", "step ms", "CPU ms/step", "peak RSS MB",
                                                     "peak above start MB", "spiketwin speed-up (wall)", "(CPU)",
                                                     "spiketwin peak RSS saving", "(above start)"], rows)
    for side, note in notes.items():
        print(f"  {side}: not measured ({note})")
    from spiketwin.kernels import lif as lif_ops
    print(f"  spiketwin neurons: {lif_ops.status()}")


if __name__ == "__main__":
    main()
