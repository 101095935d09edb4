"""The ``spiketwin`` command line: the whole journey from training to energy numbers and NIR files.

    spiketwin train --model scnn --epochs 5 --out ann.safetensors
    spiketwin energy --checkpoint ann.safetensors --json energy.json
    spiketwin export-nir --checkpoint ann.safetensors --out scnn.nir

Every subcommand has ``--help``. Exit codes: 0 success, 2 usage error (unknown flag, missing option, bad
config file), 1 failure (missing file, a model that cannot be converted or exported, ...), each with a
one-line message on stderr (``--debug`` shows the traceback). ``--config FILE`` (TOML; YAML when PyYAML is
installed) supplies any option: top-level keys apply to every subcommand that has them, a table
``[train]`` (YAML: a mapping ``train:``) to that subcommand only; flags on the command line win.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import checkpoint
from .energy import PRESETS, NotSpikingError, simulation_run

COMMANDS = ("demo", "train", "qat", "convert", "simulate", "verify", "energy", "export-nir", "bench")


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit code 2. ``prog`` names the (sub)command."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


# ----------------------------------------------------------------------------------------------- options

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML (or YAML) file with options (flags win)")
    p.add_argument("--device", default="auto",
                   help="torch device (default auto: cuda when available, cuda:LOCAL_RANK under torchrun; else cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback on failure")


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice, one per core); on a small or shared CPU, 1 is "
                        "often several times faster for these small models")


def _data(p: argparse.ArgumentParser) -> None:
    from .data import available_datasets

    p.add_argument("--data", default="digits", choices=available_datasets(), metavar="NAME",
                   help="digits (default): scikit-learn's bundled 8x8 digits, no files; the others read their "
                        "published files in --data-root (spiketwin.data.get_dataset, docs/data.md): mnist (IDX; the "
                        "t10k file, first --n-train to train, the rest to test), cifar10, cifar100 (python pickle "
                        "batches), imagefolder (root/train/<class>/<image>, root/val/...), dvs_gesture (AEDAT 3.1 + "
                        "labels CSV), cifar10_dvs (AEDAT 2.0); one of: " + ", ".join(available_datasets()))
    p.add_argument("--data-root", metavar="DIR", help="folder of the data files (every data set but digits)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N samples of each split")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (per process under torchrun; default: 64)")
    p.add_argument("--n-train", type=int, default=8000, metavar="N",
                   help="mnist: the first N images of the t10k file train, the rest test (default: 8000)")
    p.add_argument("--frames", type=int, default=16, metavar="T",
                   help="dvs_gesture, cifar10_dvs: frames per sample, split by event number (default: 16)")
    p.add_argument("--image-size", type=int, default=224, metavar="PX",
                   help="imagefolder: centre crop size after resizing the shorter side (default: 224)")


def _model(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    p.add_argument("--checkpoint", metavar="FILE", help=checkpoint_help)
    p.add_argument("--model", metavar="NAME", help="registry name of a fresh model, e.g. scnn "
                                                   "(spiketwin.models.available())")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="model constructor overrides (e.g. --set T=2 channels=(8,16)); a fresh model's image size, "
                        "input channels and classes default to the data's")


def _raster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raster", metavar="PNG", help="write a spike raster of the first test sample here")
    p.add_argument("--raster-module", metavar="PATH", help="the neuron layer to draw (default: the first one)")
    p.add_argument("--raster-neurons", metavar="I,J,..", help="neuron indices in that layer (default: the first 64)")


def _training(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The options of :class:`spiketwin.train.TrainConfig` (AdamW, warm-up then cosine decay)."""
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default: {epochs})")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW peak learning rate (default: {lr})")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up of the learning rate over this many epochs, then cosine decay (default: 1)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default: 0)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup: each batch mixed with its reverse, lambda ~ Beta(ALPHA, ALPHA) (default: 0, off)")
    p.add_argument("--mixup-off-epoch", type=int, metavar="E", help="train without mixup from epoch E on")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes reading file-streamed training data (imagefolder, event sets) (default: 0: "
                        "this one)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="write metrics.jsonl, run.json and checkpoint.safetensors (model, optimizer, schedule, RNG; "
                        "atomic) here after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly where the checkpoint in --run-dir stopped (same flags; fresh start if none)")
    p.add_argument("--out", metavar="FILE", help="write the trained model here (safetensors, for the other commands)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spiketwin", description="spiketwin: spiking transformers, from training to energy "
                                                   "numbers and NIR files. Every COMMAND has --help.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"spiketwin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name not in ("demo", "bench"):  # the demo and the benchmarks set their own threads (--threads after --)
            _threads(p)
        return p

    p = command("demo", "train, quantize, convert and verify a small ViT on the bundled digits (a few minutes)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER,
                   help="the demo's own options after --, e.g. spiketwin demo -- --epochs 5 (-- --help lists them)")

    p = command("train", "train a model (ANN, or a directly trained SNN such as scnn / Spikformer); "
                         "python -m spiketwin.train is the same command")
    _model(p, "start from this checkpoint")
    _data(p)
    _training(p, epochs=10, lr=1e-3)

    p = command("qat", "quantization-aware training: ANN checkpoint -> QANN checkpoint")
    _model(p, "the trained ANN (required unless --model)")
    _data(p)
    _training(p, epochs=3, lr=1e-4)
    p.add_argument("--levels", type=int, default=16, help="quantization levels (default: 16)")
    p.add_argument("--neuron", default="stbif", choices=("stbif", "ilif"),
                   help="stbif: SpikeZIP-TF; ilif: SpikeConverter (default: stbif)")

    p = command("convert", "QANN checkpoint -> SNN checkpoint, with the equivalence check on test samples")
    _model(p, "the QANN (required)")
    _data(p)
    p.add_argument("--out", metavar="FILE", help="write the SNN checkpoint here")

    p = command("simulate", "run an SNN on the test set: accuracy per time step, settle steps")
    _model(p, "the SNN (or QANN, converted on the fly) (required)")
    _data(p)
    p.add_argument("--max-steps", type=int, default=64, help="time-step cap (default: 64)")
    p.add_argument("--step-mode", default="m", choices=("m", "s"), help="m: sequence (fast), s: step by step")
    p.add_argument("--plot", metavar="PNG", help="write the accuracy-vs-time-step curve here")
    p.add_argument("--settle-plot", metavar="PNG", help="write the settle-step histogram here")
    _raster(p)

    p = command("verify", "prove SNN == QANN on test samples (float64, per sample and per layer)")
    _model(p, "the QANN or SNN (required)")
    _data(p)

    p = command("energy", "operation counts, firing rates and energy of an SNN beside its ANN")
    _model(p, "the SNN (a directly trained model, or an SNN checkpoint)")
    _data(p)
    p.add_argument("--samples", type=int, default=64, help="test samples to average over (default: 64)")
    p.add_argument("--max-steps", type=int, default=64, help="time steps for a converted SNN (default: 64)")
    p.add_argument("--preset", default="fp32", choices=sorted(PRESETS),
                   help="45 nm energy per op (Horowitz 2014; default fp32: MAC 4.6 pJ, AC 0.9 pJ)")
    p.add_argument("--e-mac", type=float, help="energy per MAC in pJ (overrides --preset)")
    p.add_argument("--e-ac", type=float, help="energy per accumulate in pJ (overrides --preset)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the report as CSV")
    p.add_argument("--plot", metavar="PNG", help="write the firing rate per layer here")
    _raster(p)

    p = command("export-nir", "write the SNN as an NIR graph (what NIR can express; the rest is listed)")
    _model(p, "the SNN")
    _data(p)
    p.add_argument("--out", metavar="FILE", help="the NIR file to write (required)")
    p.add_argument("--submodule", metavar="PATH", help="export only this part (default: the model's "
                                                        "step_network when it has one, else the whole model; "
                                                        "'' for the whole model)")
    p.add_argument("--dt", type=float, default=1.0, help="time per step for NIR's continuous neurons (default 1)")
    p.add_argument("--samples", type=int, default=8, help="test samples for the shapes and the read-back check")

    p = command("bench", "run a benchmark from the repository's bench/ folder (no name: list them)")
    p.add_argument("name", nargs="?", help="benchmark module, e.g. lif")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return parser


# ----------------------------------------------------------------------------------------------- config

def _load_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file not found: {file}")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise UsageError(f"config {file}: YAML needs PyYAML (pip install pyyaml); or write it as TOML") from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config {file}: not valid YAML: {str(e).splitlines()[0]}") from e
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config {file}: not valid TOML: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"config {file}: expected a table of options, got {type(data).__name__}")
    return data


def _dest(key: str) -> str:
    """The argparse destination of a config key (``batch-size`` -> ``batch_size``, ``set`` -> ``overrides``)."""
    key = key.replace("-", "_")
    return "overrides" if key == "set" else key


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str], name: str | None) -> None:
    """Turn the values of ``--config FILE`` into defaults of the parser of subcommand ``name``."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None or name is None:
        return
    data = _load_config(path)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sub = subparsers[name]
    options = {cmd: {a.dest for a in p._actions} - {"help", "config"} for cmd, p in subparsers.items()}
    values = {k: v for k, v in data.items() if k not in COMMANDS}
    unknown = [k for k in values if not any(_dest(k) in dests for dests in options.values())]
    for cmd in COMMANDS:
        if cmd in data:
            if not isinstance(data[cmd], dict):
                raise UsageError(f"config {path}: [{cmd}] must be a table of options")
            unknown += [f"{cmd}.{k}" for k in data[cmd] if _dest(k) not in options[cmd]]
    if unknown:
        raise UsageError(f"config {path}: unknown option(s) {', '.join(sorted(unknown))}")
    values.update(data.get(name, {}))
    defaults = {_dest(k): v for k, v in values.items() if _dest(k) in options[name]}
    if isinstance(defaults.get("overrides"), dict):  # a table of constructor keywords -> --set strings
        defaults["overrides"] = [f"{k}={v!r}" for k, v in defaults["overrides"].items()]
    sub.set_defaults(**defaults)


# ----------------------------------------------------------------------------------------------- helpers

def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _overrides(values: Sequence[str]) -> dict:
    """``--set key=value`` strings -> constructor keyword arguments (values read as Python literals)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def load_data(args):
    """``(train, test)`` of ``--data`` (:func:`spiketwin.data.train_test`), cut to ``--limit``: ``TensorData``
    for in-memory sets, file-streamed ``Dataset`` otherwise."""
    from .data import train_test

    if args.data != "digits" and not args.data_root:
        raise UsageError(f"--data {args.data} needs --data-root DIR (the folder of its files)")
    for name in ("limit", "batch_size", "n_train", "frames", "image_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    options = {"mnist": {"n_train": args.n_train}, "imagefolder": {"size": args.image_size},
               "dvs_gesture": {"frames": args.frames}, "cifar10_dvs": {"frames": args.frames}}
    return train_test(args.data, args.data_root, args.limit, **options.get(args.data, {}))


def first_samples(data, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the first ``n`` samples (all by default) of a data set from :func:`load_data`."""
    from .data import TensorData
    from .train import collate

    if isinstance(data, TensorData):
        return tuple(t[:n] for t in data.tensors)
    return collate([data[i] for i in range(len(data) if n is None else min(n, len(data)))])


def _auto_device() -> str:
    """``cuda:LOCAL_RANK`` (``cuda`` = ``cuda:0`` outside torchrun) when CUDA is available, else ``cpu``."""
    import os

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def _passed_on(rest: Sequence[str]) -> list[str]:
    """Arguments for a wrapped program (demo, benchmark), without the ``--`` that separates them."""
    rest = list(rest)
    return rest[1:] if rest[:1] == ["--"] else rest


def _require(args, name: str) -> None:
    if getattr(args, name) in (None, ""):
        raise UsageError(f"--{name.replace('_', '-')} is required (or '{name}' in the config file)")


def _data_defaults(name: str, overrides: dict, data) -> dict:
    """Constructor arguments of a fresh model ``name`` taken from its training data: image size, input channels
    and number of classes, under the names its constructor has (``img_size`` / ``image_size``, ``in_channels`` /
    ``in_chans``, ``num_classes``), for those the user did not set."""
    import inspect

    from .models import model_class

    sample = data[0][0]
    values = {"img_size": sample.shape[-1], "image_size": sample.shape[-1], "in_channels": sample.shape[-3],
              "in_chans": sample.shape[-3], "num_classes": len(data.classes)}
    if sample.dim() < 3 or sample.shape[-1] != sample.shape[-2]:
        values = {"num_classes": values["num_classes"]}  # not square images: only the classes are implied
    accepted = inspect.signature(model_class(name)).parameters
    return {k: int(v) for k, v in values.items() if k in accepted and k not in overrides}


def _load_model(args, stages: Sequence[str] = checkpoint.STAGES, snn: bool = True, data=None):
    """``(model, info)`` from ``--checkpoint`` (an SNN checkpoint gives the QANN when ``snn=False``), or a
    fresh ``--model`` (stage 'ann'; shaped for the training set ``data`` when given, see :func:`_data_defaults`)."""
    from .models import create

    if args.checkpoint:
        model, info = checkpoint.load(args.checkpoint, snn=snn)
        if info["stage"] not in stages:
            raise ValueError(f"{args.checkpoint} holds a {info['stage']} model; this command needs "
                             f"{' or '.join(stages)}")
    elif args.model:
        if "ann" not in stages:
            raise UsageError(f"needs a {' or '.join(stages)} --checkpoint, not a fresh --model")
        overrides = _overrides(args.overrides)
        if data is not None:
            overrides = {**_data_defaults(args.model, overrides, data), **overrides}
        info = {"model": args.model, "overrides": overrides, "stage": "ann"}
        model = create(args.model, **overrides)
    else:
        raise UsageError("give --checkpoint FILE or --model NAME")
    return model.to(args.device), info


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints results and writes files."""
    import os

    return int(os.environ.get("RANK", "0"))


def _fit(model, data, args, info: dict) -> float:
    """Train ``model`` on ``data`` (``(train, test)`` from :func:`load_data`) with the training options; with
    ``--run-dir`` also write ``run.json`` (the model's ``info`` and the options) there, under the run directory's
    lock (:func:`spiketwin.train.run_dir_lock`) like the training itself. Returns test accuracy."""
    import json
    import math
    from contextlib import nullcontext

    from .data import TensorData
    from .train import TrainConfig, fit, run_dir_lock

    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir DIR (the folder of the checkpoint to continue from)")
    for name in ("mixup", "label_smoothing", "warmup_epochs", "workers"):
        if getattr(args, name) < 0 or not math.isfinite(getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.label_smoothing >= 1:
        raise UsageError(f"--label-smoothing must be < 1, got {args.label_smoothing}")
    train, test = data
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, seed=args.seed,
                      progress=not args.quiet, mixup_alpha=args.mixup, mixup_off_epoch=args.mixup_off_epoch,
                      out_dir=args.run_dir, resume=args.resume, workers=args.workers)
    def pair(data):  # in-memory sets as tensors (fast slicing); file-streamed ones as the Dataset
        return data.tensors if isinstance(data, TensorData) else (data, None)

    writes = bool(args.run_dir) and _rank() == 0
    with run_dir_lock(args.run_dir) if writes else nullcontext():  # fit's lock, taken before run.json is written
        if writes:
            options = {k: v for k, v in vars(args).items() if k not in ("config", "debug", "quiet")}
            (Path(args.run_dir) / "run.json").write_text(json.dumps({"info": info, "args": options}, indent=1))
        history = fit(model, *pair(train), cfg, eval_data=pair(test) if isinstance(test, TensorData) else test)
    accuracy = history[-1]["accuracy"]
    if _rank() == 0:
        print(f"{args.command}: {len(history)} epochs, final loss {history[-1]['loss']:.4f}, "
              f"test accuracy {100 * accuracy:.2f}% ({len(test)} samples)"
              + (f"; metrics and checkpoint in {args.run_dir}" if args.run_dir else ""))
    return accuracy


# ----------------------------------------------------------------------------------------------- commands

def cmd_demo(args) -> None:
    from . import demo

    demo.main(_passed_on(args.demo_args))


def cmd_train(args) -> None:
    torch.manual_seed(args.seed)
    data = load_data(args)
    model, info = _load_model(args, stages=("ann",), data=data[0])
    _fit(model, data, args, info)
    if args.out and _rank() == 0:
        checkpoint.save(model, args.out, info)
        print(f"train: wrote {args.out}")


def cmd_qat(args) -> None:
    from .convert import to_qann

    torch.manual_seed(args.seed)
    data = load_data(args)
    ann, info = _load_model(args, stages=("ann",), data=data[0])
    kwargs = {"levels": args.levels, "neuron": args.neuron}
    x_first = first_samples(data[0], 256)[0]
    qann = to_qann(ann, **kwargs, **({"calibration": x_first.to(args.device)} if args.neuron == "ilif" else {}))
    info = {**info, "stage": "qann", "qann": kwargs, "input_shape": list(x_first.shape[1:])}
    _fit(qann, data, args, info)
    if args.out and _rank() == 0:
        checkpoint.save(qann, args.out, info)
        print(f"qat: wrote {args.out}")


def _verify(qann, args) -> None:
    """Print the float64 equivalence check of ``qann`` and its SNN on the first test batch."""
    from .convert import to_snn, verify

    qann = qann.double()
    x_test = first_samples(load_data(args)[1], args.batch_size)[0].to(args.device).double()
    print(verify(qann, to_snn(qann), x_test))


def cmd_convert(args) -> None:
    _require(args, "checkpoint")
    qann, info = _load_model(args, stages=("qann",))
    _verify(qann, args)
    if args.out:
        checkpoint.save(qann.float(), args.out, {**info, "stage": "snn"})
        print(f"convert: wrote {args.out}")


def cmd_simulate(args) -> None:
    from .convert import to_snn
    from .simulate import evaluate_per_step

    _require(args, "checkpoint")
    qann, _ = _load_model(args, stages=("qann", "snn"), snn=False)
    snn = to_snn(qann)
    x_test, y_test = first_samples(load_data(args)[1])
    result = evaluate_per_step(snn, x_test, y_test, args.batch_size, args.max_steps, args.step_mode,
                               progress=not args.quiet, steps=args.max_steps)
    accuracy, settle_all = result.accuracy, result.settle_step
    done = settle_all[settle_all >= 0]
    marks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t < args.max_steps] + [args.max_steps]
    from .train import evaluate

    qann_accuracy = evaluate(qann, x_test, y_test, batch_size=args.batch_size)
    print(f"QANN accuracy {100 * qann_accuracy:.2f}%; SNN accuracy at T: "
          + ", ".join(f"{t}: {100 * accuracy[t - 1]:.2f}%" for t in marks))
    if len(done):
        print(f"settle step: median {int(done.median())}, max {int(done.max())}; "
              f"{len(settle_all) - len(done)} of {len(settle_all)} not settled within {args.max_steps} steps")
    else:
        print(f"no sample settled within {args.max_steps} steps")
    if args.plot:
        from .plots import accuracy_vs_steps

        print(f"simulate: wrote {accuracy_vs_steps(accuracy, args.plot, reference={'QANN': qann_accuracy})}")
    if args.settle_plot:
        from .plots import settle_histogram

        print(f"simulate: wrote {settle_histogram(settle_all, args.settle_plot)}")
    _write_raster(snn, x_test.to(args.device), args, simulation_run(args.max_steps))


def cmd_verify(args) -> None:
    _require(args, "checkpoint")
    qann, _ = _load_model(args, stages=("qann", "snn"), snn=False)
    _verify(qann, args)


def _write_raster(model, x, args, run=None) -> None:
    """``--raster``: spikes of ``--raster-module`` (default: the first neuron layer) for the first sample."""
    if not args.raster:
        return
    from .neurons import ILIF, LIF, STBIF
    from .plots import record, spike_raster

    name = args.raster_module or next((n for n, m in model.named_modules() if isinstance(m, (LIF, STBIF, ILIF))),
                                      None)
    if name is None:
        raise ValueError(f"--raster: {type(model).__name__} has no neuron layer; name one with --raster-module")
    try:
        neurons = None if not args.raster_neurons else [int(i) for i in args.raster_neurons.split(",")]
    except ValueError as e:
        raise UsageError(f"--raster-neurons expects comma-separated integers, got {args.raster_neurons!r}") from e
    spikes = record(model, x[:1], name, run=run)
    print(f"{args.command}: wrote {spike_raster(spikes, args.raster, neurons, title=f'Spikes of {name}')}")


def cmd_energy(args) -> None:
    from .energy import report

    model, info = _load_model(args, stages=("ann", "snn"))
    x = first_samples(load_data(args)[1], args.samples)[0].to(args.device)
    run = simulation_run(args.max_steps) if hasattr(model, "simulate") else None
    try:
        result = report(model, x, preset=args.preset, e_mac=args.e_mac, e_ac=args.e_ac, run=run)
    except NotSpikingError as e:
        raise ValueError(f"energy: {info['model']} ({info['stage']}) is not spiking; give a directly trained "
                         "SNN or an SNN checkpoint (spiketwin convert)") from e
    print(result.table())
    if args.json:
        result.to_json(args.json)
        print(f"energy: wrote {args.json}")
    if args.csv:
        result.to_csv(args.csv)
        print(f"energy: wrote {args.csv}")
    if args.plot:
        from .plots import firing_rates

        print(f"energy: wrote {firing_rates(result, args.plot)}")
    _write_raster(model, x, args, run)


def cmd_export_nir(args) -> None:
    from .export import check, to_nir

    _require(args, "out")
    model, info = _load_model(args, stages=("ann", "snn"))
    submodule = args.submodule if args.submodule is not None else (
        "step_network" if hasattr(model, "step_network") else "")
    submodule = submodule or None  # "" exports the whole model
    x = first_samples(load_data(args)[1], args.samples)[0].to(args.device)
    graph = to_nir(model.eval(), x, args.out, submodule=submodule, dt=args.dt)
    print(f"export-nir: wrote {args.out} ({len(graph.nodes)} nodes, {len(graph.edges)} edges"
          f"{f', sub-module {submodule}' if submodule else ''}; one time step, dt={args.dt})")
    try:
        import nirtorch  # noqa: F401
    except ImportError:
        print("export-nir: nirtorch is not installed, so the file was not read back (pip install 'spiketwin[nir]')")
        return
    diff = check(model, args.out, x, submodule=submodule)
    print(f"export-nir: read back with nirtorch and run on {len(x)} test samples: max |output difference| = "
          f"{diff:.3g}")
    if diff > 1e-4:
        raise RuntimeError(f"the NIR file does not reproduce the model (max difference {diff:.3g})")


def cmd_bench(args) -> None:
    import importlib

    if Path("bench", "__init__.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the repository root, where bench/ lives
    try:
        names = importlib.import_module("bench.__main__").names()
    except ImportError as e:
        raise FileNotFoundError("the benchmarks live in the repository's bench/ folder: run spiketwin bench from "
                                "the repository root") from e
    if not args.name:
        print("benchmarks: " + ", ".join(names) + "  (spiketwin bench NAME [args...])")
        return
    if args.name not in names:
        raise UsageError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    importlib.import_module(f"bench.{args.name}").main(_passed_on(args.bench_args))


HANDLERS = {"demo": cmd_demo, "train": cmd_train, "qat": cmd_qat, "convert": cmd_convert, "simulate": cmd_simulate,
            "verify": cmd_verify, "energy": cmd_energy, "export-nir": cmd_export_nir, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        _apply_config(parser, argv, command)
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see spiketwin {args.command} --help)")
        if getattr(args, "device", None) == "auto":
            args.device = _auto_device()
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        HANDLERS[args.command](args)
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except UsageError as e:
        prog = e.prog or ("spiketwin" + (f" {command}" if command else ""))
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spiketwin: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if "--debug" in argv:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"spiketwin {command or ''}: error: {message}".replace(" :", ":"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
