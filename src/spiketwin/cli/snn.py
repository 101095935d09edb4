"""``spiketwin convert``, ``simulate`` and ``verify``: a QANN checkpoint becomes an SNN, runs, is proven equal."""

from __future__ import annotations

import argparse

from .. import checkpoint
from ..energy import simulation_run
from .data import add_data_options, first_samples, load_data
from .model import add_model_options, load_model
from .raster import add_raster_options, write_raster
from .usage import Command, UsageError, rank, require


def _verify(qann, args, options: dict) -> None:
    """Print the float64 equivalence check of ``qann`` and its SNN (``to_snn`` ``options``) on the first test batch."""
    import torch

    from ..convert import to_snn, verify
    from ..inputs import to

    qann = qann.double()
    x_test = to(first_samples(load_data(args)[1], args.batch_size)[0], args.device, torch.float64)
    print(verify(qann, to_snn(qann, **options), x_test))


def _add_snn_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", choices=("exact", "events"),
                   help="the SNN's state: exact (each step one forward with the neurons' counts; bit-identical to "
                        "the QANN) or events (inputs once, event-driven increments) (default: the checkpoint's, "
                        "else exact; engine QANNs only)")
    p.add_argument("--spikes-per-step", type=int, metavar="M",
                   help="ST-BIF neurons emit up to M spikes per step (default: the checkpoint's, else 1, SpikeZIP-TF's "
                        "neuron; the level count: any level in one step). The SNN equals the QANN for every M; it "
                        "settles sooner")


def snn_options(args, info: dict) -> dict:
    """``to_snn`` options: the checkpoint's (an SNN checkpoint keeps those it was converted with), then the flags."""
    given = {k: getattr(args, k) for k in checkpoint.SNN_OPTIONS if getattr(args, k, None) is not None}
    if given.get("spikes_per_step", 1) < 1:
        raise UsageError(f"--spikes-per-step must be >= 1, got {given['spikes_per_step']}")
    return {**info.get("snn", {}), **given}


def _convert_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the QANN (required)")
    add_data_options(p)
    _add_snn_options(p)
    p.add_argument("--out", metavar="FILE", help="write the SNN checkpoint here (with --state and --spikes-per-step)")


def cmd_convert(args) -> None:
    require(args, "checkpoint")
    qann, info = load_model(args, stages=("qann",))
    options = snn_options(args, info)
    _verify(qann, args, options)
    if args.out:
        checkpoint.save(qann.float(), args.out, {**info, "stage": "snn", "snn": options})
        print(f"convert: wrote {args.out}")


def _simulate_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the SNN (or QANN, converted on the fly) (required)")
    add_data_options(p)
    p.add_argument("--max-steps", type=int, default=64,
                   help="time-step cap (default: 64). Under torchrun the test set is shared among the processes")
    p.add_argument("--step-mode", default="m", choices=("m", "s"), help="m: sequence (fast), s: step by step")
    p.add_argument("--plot", metavar="PNG", help="write the accuracy-vs-time-step curve here")
    p.add_argument("--settle-plot", metavar="PNG", help="write the settle-step histogram here")
    _add_snn_options(p)
    add_raster_options(p)


def cmd_simulate(args) -> None:
    from ..convert import to_snn
    from ..inputs import to
    from ..simulate import evaluate_per_step

    require(args, "checkpoint")
    qann, info = load_model(args, stages=("qann", "snn"), snn=False)
    snn = to_snn(qann, **snn_options(args, info))
    x_test, y_test = first_samples(load_data(args)[1])
    # under torchrun every process simulates its share of the batches; all of them get the whole result
    result = evaluate_per_step(snn, x_test, y_test, args.batch_size, args.max_steps, args.step_mode,
                               progress=not args.quiet, steps=args.max_steps)
    if rank() != 0:  # rank 0 reports and writes
        return
    accuracy, settle_all = result.accuracy, result.settle_step
    done = settle_all[settle_all >= 0]
    marks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t < args.max_steps] + [args.max_steps]
    from ..train import evaluate

    qann_accuracy = evaluate(qann, x_test, y_test, batch_size=args.batch_size)
    print(f"QANN accuracy {100 * qann_accuracy:.2f}%; SNN accuracy at T: "
          + ", ".join(f"{t}: {100 * accuracy[t - 1]:.2f}%" for t in marks))
    if len(done):
        print(f"settle step: median {int(done.median())}, max {int(done.max())}; "
              f"{len(settle_all) - len(done)} of {len(settle_all)} not settled within {args.max_steps} steps")
    else:
        print(f"no sample settled within {args.max_steps} steps")
    if args.plot:
        from ..plots import accuracy_vs_steps

        print(f"simulate: wrote {accuracy_vs_steps(accuracy, args.plot, reference={'QANN': qann_accuracy})}")
    if args.settle_plot:
        from ..plots import settle_histogram

        print(f"simulate: wrote {settle_histogram(settle_all, args.settle_plot)}")
    write_raster(snn, to(x_test, args.device), args, simulation_run(args.max_steps))


def _verify_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the QANN or SNN (required)")
    add_data_options(p)
    _add_snn_options(p)


def cmd_verify(args) -> None:
    require(args, "checkpoint")
    qann, info = load_model(args, stages=("qann", "snn"), snn=False)
    _verify(qann, args, snn_options(args, info))


COMMANDS = {
    "convert": Command("QANN checkpoint -> SNN checkpoint, with the equivalence check on test samples",
                       _convert_options, cmd_convert),
    "simulate": Command("run an SNN on the test set: accuracy per time step, settle steps", _simulate_options,
                        cmd_simulate),
    "verify": Command("prove SNN == QANN on test samples (float64, per sample and per layer)", _verify_options,
                      cmd_verify),
}
