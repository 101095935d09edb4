"""Where an SNN step of SpikeZIP-TF spends its time, and how much of it has work to do (real MNIST, vit_mnist).

Uses the QANN cached by ``python -m bench.spikezip_mnist`` (run that first) on its timed batch (the first 256
test images) and prints

- the time per operator kind of one ``simulate`` (sequence path, adaptive chunks), dense and event-driven
  (forward hooks, 1 thread; wall time, so a loaded machine inflates both alike);
- per spiking layer, the share of sample-steps with work (a nonzero input, or for a neuron also a pending
  neuron; for ``SESA`` either operand): what the event-driven path can skip is the rest;
- per layer, the share of rows (a token, or a query row of an attention map) with a nonzero input, overall
  and at a few steps: what a finer, row-level skipping could at most avoid.

    python -m bench.spikezip_activity [--levels 16] [--batch 256]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch

from bench.spikezip_mnist import CACHE, DATA
from spiketwin.base import StatefulModule
from spiketwin.convert import to_qann, to_snn
from spiketwin.data import mnist_split
from spiketwin.models import create
from spiketwin.neurons import STBIF
from spiketwin.ops import Accumulate

SHOW_STEPS = (1, 2, 4, 6, 8, 10, 12, 16, 20)


def kind(module: torch.nn.Module) -> str:
    return f"Accumulate({type(module.fn).__name__})" if isinstance(module, Accumulate) else type(module).__name__


def set_sparse(snn, flag: bool) -> None:
    for m in snn.modules():
        if hasattr(m, "sparse"):
            m.sparse = flag


def profile(snn, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``simulate`` and the seconds spent inside each operator kind."""
    spent: collections.Counter = collections.Counter()
    start: dict[str, float] = {}
    handles = []
    def enter(module, inputs, name):
        start[name] = time.perf_counter()

    def leave(module, inputs, out, name):
        spent[kind(module)] += time.perf_counter() - start[name]

    for name, m in snn.model.named_modules():
        if isinstance(m, StatefulModule):
            handles.append(m.register_forward_pre_hook(lambda mod, i, n=name: enter(mod, i, n)))
            handles.append(m.register_forward_hook(lambda mod, i, o, n=name: leave(mod, i, o, n)))
    snn.simulate(x)
    spent.clear()
    began = time.perf_counter()
    snn.simulate(x)
    total = time.perf_counter() - began
    for h in handles:
        h.remove()
    return total, dict(spent)


def activity(snn, x: torch.Tensor):
    """Per layer: [sample-steps with work, sample-steps], rows with input per step {t: [active, all]}."""
    samples = collections.defaultdict(lambda: [0, 0])
    rows = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    step = [0]
    last_pending: dict[str, torch.Tensor] = {}

    def hook(module, inputs, out, name):
        work = inputs[0].flatten(1).ne(0).any(1)
        for extra in inputs[1:2]:
            work = work | extra.flatten(1).ne(0).any(1)
        if isinstance(module, STBIF):
            before = last_pending.get(name)
            if before is not None and len(before) == len(work):
                work = work | before
            last_pending[name] = module.pending[:, -1]
        samples[name][0] += int(work.sum())
        samples[name][1] += work.numel()
        row = inputs[0].ne(0).any(-1)
        rows[name][step[0]][0] += int(row.sum())
        rows[name][step[0]][1] += row.numel()

    handles = [snn.model.register_forward_pre_hook(lambda mod, i: step.__setitem__(0, step[0] + 1))]
    handles += [m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
                for name, m in snn.model.named_modules() if isinstance(m, StatefulModule)]
    result = snn.simulate(x, step_mode="s")  # one call per step: the step index is the call count
    for h in handles:
        h.remove()
    return samples, rows, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--qat-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    weights = CACHE / f"qann_L{args.levels}_e{args.epochs}_q{args.qat_epochs}.safetensors"
    if not weights.is_file():
        print(f"SKIPPED: no cached QANN {weights}; run python -m bench.spikezip_mnist --levels {args.levels} first")
        sys.exit(0)
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    x = mnist_split(DATA, n_train=8000)[2][: args.batch]
    qann = to_qann(create("vit_mnist"), levels=args.levels)
    qann.load_state_dict(load_file(str(weights)))
    snn = to_snn(qann.eval())
    with torch.no_grad():
        timings = {}
        for flag in (False, True):
            set_sparse(snn, flag)
            timings[flag] = profile(snn, x)
        samples, rows, result = activity(snn, x)
    print(f"{args.levels} levels, {len(x)} images, mean settle step {result.settle_step.double().mean():.2f}")
    print("\ntime per operator kind, one simulate (ms, share)")
    kinds = sorted(timings[False][1], key=lambda k: -timings[False][1][k])
    print(f"  {'operator':24s} {'dense':>14s} {'event-driven':>14s}")
    for k in kinds + ["<outside operators>", "<total>"]:
        cells = []
        for flag in (False, True):
            total, spent = timings[flag]
            value = total if k == "<total>" else total - sum(spent.values()) if k.startswith("<outside") else spent[k]
            cells.append(f"{1e3 * value:7.0f} {100 * value / total:4.0f} %")
        print(f"  {k:24s} {cells[0]:>14s} {cells[1]:>14s}")
    last = int(result.settle_step.max())
    shown = [t for t in SHOW_STEPS if t <= last]
    print("\nwork per layer: sample-steps with work %, rows with input % (overall, then at step t)")
    print(f"  {'layer':28s} {'samples':>7s} {'rows':>5s}  " + " ".join(f"{'t' + str(t):>4s}" for t in shown))
    for name, (busy, seen) in samples.items():
        per_step = rows[name]
        active = sum(v[0] for v in per_step.values()) / max(1, sum(v[1] for v in per_step.values()))
        cells = " ".join(f"{100 * per_step[t][0] / max(1, per_step[t][1]):4.0f}" for t in shown)
        print(f"  {name:28s} {100 * busy / seen:7.1f} {100 * active:5.1f}  {cells}")
    running = " ".join(f"{int((result.settle_step >= t).sum()):4d}" for t in shown)
    print(f"  {'samples still running':28s} {'':7s} {'':5s}  {running}")


if __name__ == "__main__":
    main()
