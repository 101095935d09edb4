"""Multi-spike ST-BIF on real data: settle steps, accuracy at few steps, SOPs / energy and time to the exact
answer for m = 1, 2, 4, 8 and ``levels`` spikes per neuron and step (issue 16).

    python -m bench.multispike [--quick] [--datasets mnist sst2] [--levels 16 32] [--m 1 2 4 8 0]
                               [--plot docs/img/multispike.png] [--threads 1]

Models: MNIST ``vit_mnist`` and its QANNs as ``bench.spikezip_mnist`` trains and caches them (same files), the
SST-2 ``roberta_sst2_small`` and its QANNs as ``bench.spikezip_sst2`` does. For every level count and ``m``
(``0`` stands for ``levels``) the SNN is ``to_snn(qann, spikes_per_step=m)`` and runs the whole test set:

- float32, early exit: settle median / max, accuracy if stopped after T = 1, 2, 4, 8, 16 steps, the
  prediction agreement with the float32 QANN;
- float64: the SNN's logits against the float64 QANN's on every test sample (the exactness proof: same
  prediction, largest relative difference);
- energy (:func:`spiketwin.energy.report`, fp32 preset) on the first samples, run to their last settle step:
  SOPs and energy per sample (what ``report`` counts, see the note it prints);
- time to the exact answer: one batch, every ``m`` and the QANN forward timed in turns (median).

Then one PNG per data set and level count: accuracy vs T, a curve per ``m``. ``--quick``: MNIST 256 test
images / SST-2 128 dev sentences, 16 levels, m = 1, 4, 16, one timing repeat.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from bench import spikezip_sst2
from bench.common import print_table, round_robin
from bench.spikezip_mnist import DATA as MNIST_DATA
from bench.spikezip_mnist import trained_ann, trained_qann
from spiketwin import energy, plots
from spiketwin.convert import to_snn
from spiketwin.data import mnist_split
from spiketwin.simulate import simulate

MARKS = (1, 2, 4, 8, 16)
"""The T at which accuracy is reported."""


def batches(dataset: str, inputs, batch: int) -> list[tuple[torch.Tensor, object]]:
    """``(indices, input)`` batches of a test set: image tensors in order; sentences grouped by length."""
    if dataset == "mnist":
        index = torch.arange(len(inputs))
        return [(i, inputs[i]) for i in index.split(batch)]
    groups = spikezip_sst2.sorted_batches(inputs["attention_mask"].sum(1), batch)
    return [(i, {k: v[i] for k, v in inputs.items()}) for i in groups]


def subset(inputs, n: int):
    return inputs[:n] if isinstance(inputs, torch.Tensor) else {k: v[:n] for k, v in inputs.items()}


def cast(inputs, dtype: torch.dtype):
    """Images to ``dtype``; token ids stay integers."""
    return inputs.to(dtype) if isinstance(inputs, torch.Tensor) else inputs


@torch.no_grad()
def run_set(snn, parts, n: int, classes: int, dtype: torch.dtype):
    """The SNN over every batch (early exit): logits ``[n, C]``, settle steps ``[n]`` and the running logits
    ``[T, n, C]`` (a settled sample keeps its final logits at every later step)."""
    out = torch.zeros(n, classes, dtype=dtype)
    settle = torch.zeros(n, dtype=torch.int64)
    runs = []
    for index, x in parts:
        result = simulate(snn, cast(x, dtype), max_steps=512)
        out[index], settle[index] = result.output, result.settle_step
        runs.append((index, result.per_step))
    steps = max([p.shape[0] for _, p in runs] + [max(MARKS)])
    curve = torch.empty(steps, n, classes, dtype=dtype)
    for index, p in runs:
        curve[:p.shape[0], index] = p
        curve[p.shape[0]:, index] = p[-1]
    return out, settle, curve


@torch.no_grad()
def qann_logits(qann, parts, n: int, classes: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(n, classes, dtype=dtype)
    for index, x in parts:
        x = cast(x, dtype)
        out[index] = qann(**x) if isinstance(x, dict) else qann(x)
    return out


def timed_size(dataset: str, args, n: int) -> int:
    """Samples in the timed batch: ``--timed`` images, at most 64 sentences (as ``bench.spikezip_sst2``)."""
    return min(args.timed, n) if dataset == "mnist" else min(args.timed, 64, n)


def energy_per_sample(snn, x, steps: int, analog: str) -> dict:
    """``energy.report`` of ``snn`` on ``x`` run for ``steps`` steps (no early exit: settled samples are silent)."""
    def run(model, inputs):  # energy.simulation_run reads early_exit from the signature; RoBERTa's takes **kwargs
        return model.simulate(inputs, max_steps=steps, early_exit=False)

    totals = energy.report(snn, x, run=run, analog=analog).totals
    return {"sops": totals["sops"], "events": totals.get("sop_events"), "energy_pj": totals["energy_pj"]}


def run_config(name: str, levels: int, qann, inputs, labels: torch.Tensor, args) -> tuple[list, list, dict]:
    """Every ``m`` at one level count: the accuracy rows, the cost rows and the accuracy curves."""
    qann = qann.float().eval()
    qann64 = copy.deepcopy(qann).double()
    n, classes = len(labels), int(labels.max()) + 1
    batch = args.batch if name == "mnist" else min(args.batch, 64)  # sentences: as bench.spikezip_sst2
    parts = batches(name, inputs, batch)
    q32 = qann_logits(qann, parts, n, classes, torch.float32).argmax(1)
    q64 = qann_logits(qann64, parts, n, classes, torch.float64)
    qann_acc = 100 * (q32 == labels).double().mean().item()
    ms = [levels if m == 0 else m for m in args.m]
    timed = subset(inputs, timed_size(name, args, n))
    snns = {m: to_snn(qann, spikes_per_step=m) for m in ms}
    acc_rows, cost_rows, curves, costs = [], [], {}, {}
    for m in ms:
        out, settle, curve = run_set(snns[m], parts, n, classes, torch.float32)
        out64, settle64, _ = run_set(to_snn(qann64, spikes_per_step=m), parts, n, classes, torch.float64)
        rel = ((out64 - q64).abs().amax(1) / q64.abs().amax(1)).max().item()
        same64 = int((out64.argmax(1) == q64.argmax(1)).sum())
        accuracy = (curve.argmax(-1) == labels).double().mean(-1)
        curves[f"m={m}"] = accuracy[:args.plot_steps]
        s = settle.double()
        acc_rows.append([m, s.median().item(), int(s.max()), int((settle < 0).sum()),
                         *[100 * accuracy[t - 1].item() for t in MARKS], 100 * (out.argmax(1) == labels).double()
                         .mean().item(), qann_acc, 100 * (out.argmax(1) == q32).double().mean().item(),
                         f"{same64}/{n}", f"{rel:.1e}", "yes" if torch.equal(settle64, settle) else "no"])
        # RoBERTa: the embeddings feed a neuron, so no layer has analog input ("first" would take the graded
        # spikes k θ of m > 1, several magnitudes, for analog input and price them as MACs)
        costs[m] = energy_per_sample(snns[m], subset(inputs, args.energy), int(settle[:args.energy].max()),
                                     "first" if name == "mnist" else "none")
    timings = round_robin([lambda: qann(**timed) if isinstance(timed, dict) else qann(timed)]
                          + [lambda m=m: simulate(snns[m], timed, max_steps=512) for m in ms], args.repeats)
    t_qann, t_snn = timings[0].seconds, {m: t.seconds for m, t in zip(ms, timings[1:])}
    base = costs[ms[0]]
    for m in ms:
        c = costs[m]
        cost_rows.append([m, c["sops"], "n/a" if c["events"] is None else c["events"], c["sops"] / base["sops"],
                          c["energy_pj"] / 1e6, c["energy_pj"] / base["energy_pj"], 1e3 * t_snn[m],
                          t_snn[m] / t_snn[ms[0]], t_snn[m] / t_qann])
    return acc_rows, cost_rows, {"curves": curves, "qann": qann_acc / 100, "rows": acc_rows, "costs": costs,
                                 "ms": ms}


def mnist_configs(args):
    if not (args.mnist / "t10k-images-idx3-ubyte.gz").is_file() and not (
            args.mnist / "t10k-images-idx3-ubyte").is_file():
        print(f"SKIPPED MNIST: not found in {args.mnist}")
        return
    x_train, y_train, x_test, y_test = mnist_split(args.mnist, n_train=8000)
    ann = trained_ann(x_train, y_train, 20)
    for levels in args.levels:
        qann = trained_qann(ann, levels, x_train, y_train, 20, 3)
        yield levels, qann, x_test[:args.samples], y_test[:args.samples]


def sst2_configs(args):
    if not (args.sst2 / "train.tsv").is_file():
        print(f"SKIPPED SST-2: not found in {args.sst2}")
        return
    for levels in args.levels:
        models = spikezip_sst2.trained(spikezip_sst2.parser().parse_args(
            ["--data", str(args.sst2), "--levels", str(levels)]))
        dev = subset(models["dev"], args.samples)
        yield levels, models["qann"], dev, models["dev_y"][:args.samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "sst2"], choices=["mnist", "sst2"])
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 0],
                        help="spikes per step; 0 means the level count")
    parser.add_argument("--samples", type=int, default=None, help="test samples (default: the whole test set)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--timed", type=int, default=256, help="samples in the timed batch")
    parser.add_argument("--energy", type=int, default=256, help="samples counted by energy.report")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=None, help="PNG stem: <stem>_<dataset>_L<levels>.png")
    parser.add_argument("--plot-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mnist", type=Path, default=MNIST_DATA)
    parser.add_argument("--sst2", type=Path, default=spikezip_sst2.DATA)
    parser.add_argument("--quick", action="store_true", help="a small run (see the module doc)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.levels, args.m, args.repeats = args.samples or 256, [16], [1, 4, 16], 1
        args.timed, args.energy = min(args.timed, 64), min(args.energy, 64)
    if any(m < 0 for m in args.m):
        parser.error("--m: spikes per step must be >= 1 (or 0 for the level count)")
    torch.set_num_threads(args.threads)
    found = {}
    for name in args.datasets:
        configs = mnist_configs(args) if name == "mnist" else sst2_configs(args)
        for levels, qann, inputs, labels in configs:
            if name == "sst2" and args.quick:
                inputs, labels = subset(inputs, 128), labels[:128]
            print(f"{name}: {levels} levels, {len(labels)} test samples, m = {args.m}", flush=True)
            acc_rows, cost_rows, found[name, levels] = run_config(name, levels, qann, inputs, labels, args)
            print_table(f"{name}, {levels} levels, {len(labels)} test samples: settle steps and accuracy (float32 "
                        "SNN, early exit) and the float64 proof",
                        ["m", "settle median", "settle max", "unsettled", *[f"acc T={t} %" for t in MARKS],
                         "SNN %", "QANN %", "SNN=QANN f32 %", "f64 same pred", "f64 max rel diff",
                         "f64 settle = f32"], acc_rows)
            timed = timed_size(name, args, len(labels))
            print_table(f"{name}, {levels} levels: cost per sample (energy.report on {min(args.energy, len(labels))} "
                        f"samples) and time to the exact answer (one batch of {timed}, median of {args.repeats})",
                        ["m", "SOPs", "SOP events", "SOPs / m=1", "energy uJ", "energy / m=1", "SNN ms",
                         "time / m=1", "SNN / QANN fwd"], cost_rows)
            if args.plot is not None:
                path = args.plot.with_name(f"{args.plot.stem}_{name}_L{levels}.png")
                plots.accuracy_vs_steps(found[name, levels]["curves"], path, {"QANN": found[name, levels]["qann"]},
                                        title=f"{name}, {levels} levels: accuracy vs T per spikes-per-step m")
                print(f"wrote {path}")
    print("SOPs: spiketwin.energy's accumulates, every spike counted (a graded spike k θ is |k| accumulates per "
          "fan-out); SOP events: a graded spike counted once (chips with graded spikes); the energy prices SOPs.")
    if ("mnist", 16) in found and 4 in found["mnist", 16]["ms"] and 1 in found["mnist", 16]["ms"]:
        target(found["mnist", 16])


def target(result: dict) -> None:
    """Issue 16's target at 16 levels, m = 4, on MNIST: median settle <= 6, SNN = QANN on every test image
    (float64), SOPs no more than 10 % above m = 1's."""
    rows = {row[0]: row for row in result["rows"]}
    median, same = rows[4][1], rows[4][-3]
    got, total = (int(v) for v in same.split("/"))
    sops = result["costs"][4]["sops"] / result["costs"][1]["sops"]
    checks = [median <= 6, got == total, sops <= 1.10]
    print(f"\nTarget (MNIST, 16 levels, m = 4): median settle {median:g} (<= 6: {'met' if checks[0] else 'NOT met'}); "
          f"float64 SNN = QANN prediction on {same} test images ({'met' if checks[1] else 'NOT met'}); SOPs "
          f"{sops:.3f}x m = 1's (<= 1.10: {'met' if checks[2] else 'NOT met'})")


if __name__ == "__main__":
    main()
