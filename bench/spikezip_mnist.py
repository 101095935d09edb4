"""SpikeZIP-TF on real MNIST: accuracy, settle steps and time to the exact answer, levels 4 / 8 / 16 / 32.

Data: the MNIST test split in ``../shared/data/mnist`` (first 8,000 images train, last 2,000 test).
A small ReLU ViT (``vit_mnist``) is trained once, then fine-tuned as a QANN for every level count;
weights are cached under ``runs/bench_spikezip/`` so reruns only simulate. For each level count it prints
ANN / QANN / SNN test accuracy, SNN-QANN prediction agreement (float32), a float64 equivalence check on
a few images, the median / max settle step, and on one batch the time to the exact answer of

- the SNN: ``simulate`` of the exact-state SNN (the default: one QANN forward per step on the samples still
  running, each sample stops when it has settled, the whole batch confirmed at the end);
- (a) ``T_settle`` x one QANN forward, with ``T_settle`` the batch's largest settle step;
- (b) the reference way: one full forward of the event-driven SNN (``state="events"``) per step in a plain Python
  loop, for a fixed T = 64;
- the event-driven SNN run by ``simulate`` (early exit), for comparison;
- the float ANN's forward, for the column ``(b) / (steps x ANN)``: the ratio ``(b) / SNN`` an SNN would reach if
  every step ran the network's whole graph on the samples still running, neurons and bookkeeping free (the
  exact-state SNN runs the QANN's graph, whose operations are the ANN's, but from the first cut that can still
  move: ``skip_settled``). The ANN is timed as that graph runs it: traced, after dead-row elimination
  (``spiketwin.convert.rows``).
  Beside it, ``neurons %``: the share of the SNN's time spent in its neurons' calls (forward hooks, in a run of
  its own; CPU only).

The SNNs are timed once per ``--spikes-per-step`` value ``m`` (default 1, 2, 4): neurons that emit up to ``m``
spikes per step reach the same final counts in about ``1/m`` of the steps, and the exact-state SNN's output stays
bit-identical to the QANN's (column ``SNN = QANN bits``); ``m = 1`` is the paper's neuron, and (b) keeps it.
All runs are timed round-robin (one run of each per repeat, medians over repeats), so load changes on a
shared machine hit them alike. ``64 / steps`` is ``(b) / SNN`` if an SNN step cost as much as a step of (b):
``steps`` is the mean settle step. The accuracy table adds the float32 and bfloat16 agreement of the SNN with
its QANN in the same dtype (predictions and bit-identical logits).

    python -m bench.spikezip_mnist [--levels 4 8 16 32] [--spikes-per-step 1 2 4] [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from bench.common import print_table, round_robin, save_weights
from spiketwin.base import reset
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.graph import trace
from spiketwin.convert.rows import prune_rows
from spiketwin.data import mnist_split
from spiketwin.models import create
from spiketwin.simulate import simulate
from spiketwin.train import TrainConfig, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "mnist"
CACHE = ROOT / "runs" / "bench_spikezip"


def cached(model: torch.nn.Module, path: Path, train) -> torch.nn.Module:
    """Load ``model``'s weights from ``path`` (safetensors) or train it with ``train()`` and save them atomically."""
    from safetensors.torch import load_file

    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        print(f"  loaded {path.relative_to(ROOT)}")
        return model
    train()
    save_weights(model, path)
    return model


def snn_predictions(snn, x: torch.Tensor, batch: int):
    """Summed SNN outputs and settle steps over ``x`` in batches (sequence path, early exit)."""
    outs, settles = [], []
    for xb in x.split(batch):
        r = simulate(snn, xb, max_steps=512)
        outs.append(r.output)
        settles.append(r.settle_step)
    return torch.cat(outs), torch.cat(settles)


def reference_loop(snn, x: torch.Tensor, steps: int = 64) -> torch.Tensor:
    """(b): the official code's way to run an SNN: ``steps`` full forwards of the event-driven SNN, one per step
    (the input enters at the first, zeros after), outputs summed."""
    reset(snn.model)
    total = snn(x)
    for _ in range(steps - 1):
        total = total + snn(x)
    return total


def neuron_share(snn, x: torch.Tensor) -> float:
    """The share of one ``simulate`` of ``snn`` on ``x`` spent inside its neurons' calls, timed by forward hooks
    in a run of its own (on the CPU: CUDA calls return before their work is done)."""
    spent, started = [0.0], {}

    def before(module, args):
        started[module] = time.perf_counter()

    def after(module, args, out):
        spent[0] += time.perf_counter() - started[module]

    handles = [h for n in snn.neurons for h in (n.register_forward_pre_hook(before), n.register_forward_hook(after))]
    try:
        begin = time.perf_counter()
        simulate(snn, x, max_steps=512)
        return spent[0] / (time.perf_counter() - begin)
    finally:
        for handle in handles:
            handle.remove()


def size_tag(size: list[int] | None) -> str:
    """The cache-name suffix of a ``--size DEPTH DIM HEADS`` model (empty for ``vit_mnist`` as registered)."""
    return "" if not size else "_d{}w{}h{}".format(*size)


def trained_ann(x_train: torch.Tensor, y_train: torch.Tensor, epochs: int,
                size: list[int] | None = None) -> torch.nn.Module:
    """``vit_mnist`` (or its ``size = [depth, embed_dim, heads]`` variant) trained for ``epochs`` epochs (cached)."""
    torch.manual_seed(0)
    ann = create("vit_mnist", **(dict(zip(("depth", "embed_dim", "num_heads"), size)) if size else {}))
    print(f"ANN vit_mnist ({sum(p.numel() for p in ann.parameters()):,} parameters), {epochs} epochs")
    return cached(ann, CACHE / f"ann_e{epochs}{size_tag(size)}.safetensors",
                  lambda: fit(ann, x_train, y_train, TrainConfig(epochs=epochs, lr=2e-3, label_smoothing=0.1)))


def trained_qann(ann: torch.nn.Module, levels: int, x_train: torch.Tensor, y_train: torch.Tensor, epochs: int,
                 qat_epochs: int, size: list[int] | None = None) -> torch.nn.Module:
    """The QANN of ``ann`` (trained for ``epochs``) at ``levels`` levels after ``qat_epochs`` of QAT (cached)."""
    print(f"QANN {levels} levels, {qat_epochs} QAT epochs")
    qann = to_qann(ann, levels=levels)
    return cached(qann, CACHE / f"graph_qann_L{levels}_e{epochs}_q{qat_epochs}{size_tag(size)}.safetensors",
                  lambda: fit(qann, x_train, y_train, TrainConfig(epochs=qat_epochs, lr=5e-4, seed=levels)))


def agreement(qann, x: torch.Tensor, dtype: torch.dtype, batch: int) -> tuple[float, float]:
    """% of images whose SNN prediction equals the QANN's, and % whose logits are bit-identical, in ``dtype``."""
    q = copy.deepcopy(qann).to(dtype)
    snn = to_snn(q)
    same_pred = same_bits = 0
    with torch.no_grad():
        for xb in x.split(batch):
            xb = xb.to(dtype)
            reference, out = q(xb), simulate(snn, xb, max_steps=512).output
            same_pred += int((reference.argmax(-1) == out.argmax(-1)).sum())
            same_bits += int((reference == out).all(-1).sum())
    return 100 * same_pred / len(x), 100 * same_bits / len(x)


def run_level(levels: int, ann, ann_acc: float, data, timed: torch.Tensor, args) -> tuple[list, list[list]]:
    """QAT (or the cached QANN) at ``levels`` levels, then its accuracy row and its timing rows."""
    x_train, y_train, x_test, y_test = data
    device = timed.device
    qann = trained_qann(ann, levels, x_train, y_train, args.epochs, args.qat_epochs, args.size).to(device).eval()
    qann_acc = evaluate(qann, x_test, y_test)
    snn = to_snn(qann)
    with torch.no_grad():
        qann_logits = torch.cat([qann(xb.to(device)) for xb in x_test.split(args.batch)]).cpu()
    qann_pred = qann_logits.argmax(-1)
    out, settle = snn_predictions(snn, x_test.to(device), args.batch)
    out = out.cpu()
    snn_pred = out.argmax(-1)
    qann64 = copy.deepcopy(qann).double()
    report = verify(qann64, to_snn(qann64), x_test[:8].to(device, torch.float64))
    s = settle.double()
    bf16 = agreement(qann.cpu(), x_test, torch.bfloat16, args.batch)
    qann.to(device)
    acc_row = [levels, 100 * ann_acc, 100 * qann_acc, 100 * (snn_pred == y_test).double().mean().item(),
               100 * (snn_pred == qann_pred).double().mean().item(),
               100 * (out == qann_logits).all(-1).double().mean().item(), f"{bf16[0]:.2f} / {bf16[1]:.2f}",
               f"{report.max_rel:.1e}", s.median().item(), int(s.max()), int((s < 0).sum())]
    return acc_row, time_rows(ann, qann, timed, args)


def float_graph(ann: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """``ann`` traced and pruned as ``to_qann`` does it, without quantizers: the operations of an SNN step."""
    gm, _ = trace(copy.deepcopy(ann).eval(), x[:2])
    prune_rows(gm)
    return gm


def time_rows(ann, qann, timed: torch.Tensor, args) -> list[list]:
    """One timing row per ``--spikes-per-step`` value ``m``: the exact-state SNN with ``m``-spike neurons (its
    output bit-identical to the QANN's for every ``m``) and the event-driven SNN with the same neurons, beside the
    QANN forward and the reference loop (b), which keeps the paper's neuron (``m = 1``) at T = 64."""
    ann = float_graph(ann, timed)
    reference = to_snn(qann, state="events")
    snns = {m: (to_snn(qann, spikes_per_step=m), to_snn(qann, state="events", spikes_per_step=m))
            for m in args.spikes_per_step}
    with torch.no_grad():
        expected = qann(timed)
        loop = reference_loop(reference, timed)
        runs = [lambda: qann(timed), lambda: reference_loop(reference, timed), lambda: ann(timed)]
        for snn, events in snns.values():
            runs += [lambda snn=snn: simulate(snn, timed, max_steps=512),
                     lambda events=events: simulate(events, timed, max_steps=512)]
        seconds = [t.seconds for t in round_robin(runs, args.repeats)]
        rows = []
        for i, (m, (snn, _)) in enumerate(snns.items()):
            result = simulate(snn, timed, max_steps=512)
            exact = bool((result.output == expected).all())
            close = torch.allclose(loop, result.output, rtol=1e-4, atol=1e-5)
            t_qann, t_ref, t_ann = seconds[:3]
            t_snn, t_events = seconds[3 + 2 * i], seconds[4 + 2 * i]
            t_settle, steps = int(result.settle_step.max()), result.settle_step.double().mean().item()
            share = f"{100 * neuron_share(snn, timed):.0f}" if timed.device.type == "cpu" else "-"
            rows.append([m, t_settle, steps, 1e3 * t_qann,
                         1e3 * t_settle * t_qann, 1e3 * t_snn, 1e3 * t_ref, t_snn / (t_settle * t_qann),
                         t_ref / t_snn, 64 / steps, t_ref / (steps * t_ann), share, "yes" if exact else "NO",
                         "yes" if close else "NO", 1e3 * t_events, t_events / t_snn])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="images in the timed batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spikes-per-step", type=int, nargs="+", default=[1, 2, 4],
                        help="neurons with up to m spikes per step (1: the paper's); one timing row each")
    parser.add_argument("--size", type=int, nargs=3, metavar=("DEPTH", "DIM", "HEADS"), default=None,
                        help="a larger vit_mnist, e.g. --size 12 192 3 --levels 32 (issue 19's float32 check)")
    args = parser.parse_args(argv)
    if not (DATA / "t10k-images-idx3-ubyte.gz").is_file() and not (DATA / "t10k-images-idx3-ubyte").is_file():
        print(f"SKIPPED: MNIST not found in {DATA.resolve()} (needs t10k-images-idx3-ubyte[.gz] and "
              "t10k-labels-idx1-ubyte[.gz])")
        sys.exit(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x_train, y_train, x_test, y_test = mnist_split(DATA, n_train=8000)
    print(f"MNIST: {len(y_train)} train / {len(y_test)} test; {args.threads} CPU thread(s), device {device}")

    ann = trained_ann(x_train, y_train, args.epochs, args.size).to(device)
    ann_acc = evaluate(ann, x_test, y_test)

    acc_rows, timing = [], []
    timed = x_test[: args.batch].to(device)
    for levels in args.levels:
        acc_row, rows = run_level(levels, ann, ann_acc, (x_train, y_train, x_test, y_test), timed, args)
        acc_rows.append(acc_row)
        timing += [[levels, *row] for row in rows]

    print_table(f"SpikeZIP-TF on MNIST (vit_mnist, {len(y_test)} test images)",
                ["levels", "ANN %", "QANN %", "SNN %", "SNN=QANN % (f32)", "bit-identical % (f32)",
                 "bf16: SNN=QANN % / bit-identical %", "f64 max rel diff", "settle median", "settle max",
                 "unsettled"], acc_rows)
    print_table(f"Time to the exact answer, one batch of {len(timed)} images, {device}, {args.threads} thread(s), "
                f"median of {args.repeats}",
                ["levels", "spikes/step", "T_settle", "steps", "QANN fwd ms", "(a) T_settle x QANN ms", "SNN ms",
                 "(b) T=64 loop ms", "SNN / (a)", "(b) / SNN", "64 / steps", "(b) / (steps x ANN)", "neurons %",
                 "SNN = QANN bits",
                 "(b) ~ SNN output",
                 "events SNN ms", "events / SNN"], timing)


if __name__ == "__main__":
    main()
