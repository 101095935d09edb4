"""The model options of the command line (``--checkpoint``, ``--model``, ``--hf``, ``--set``) and the model they
give."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence

from .. import checkpoint
from .usage import UsageError


def add_model_options(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    p.add_argument("--checkpoint", metavar="FILE", help=checkpoint_help)
    p.add_argument("--model", metavar="NAME", help="registry name of a fresh model, e.g. scnn "
                                                   "(spiketwin.models.available())")
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face model from a local directory written by save_pretrained "
                                               "(config.json naming its class in 'architectures', model.safetensors; "
                                               "tokenizer files for text); nothing is downloaded")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="model constructor overrides (e.g. --set T=2 channels=(8,16)); a fresh model's image size, "
                        "input channels and classes default to the data's")


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(values: Sequence[str]) -> dict:
    """``--set key=value`` strings -> constructor keyword arguments (values read as Python literals)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _data_defaults(name: str, overrides: dict, data) -> dict:
    """Constructor arguments of a fresh model ``name`` taken from its training data: image size, input channels
    and number of classes, under the names its constructor has (``img_size`` / ``image_size``, ``in_channels`` /
    ``in_chans``, ``num_classes``), for those the user did not set."""
    import inspect

    from ..models import model_class

    sample = data[0][0]
    values = {"img_size": sample.shape[-1], "image_size": sample.shape[-1], "in_channels": sample.shape[-3],
              "in_chans": sample.shape[-3], "num_classes": len(data.classes)}
    if sample.dim() < 3 or sample.shape[-1] != sample.shape[-2]:
        values = {"num_classes": values["num_classes"]}  # not square images: only the classes are implied
    accepted = inspect.signature(model_class(name)).parameters
    return {k: int(v) for k, v in values.items() if k in accepted and k not in overrides}


def _hf_model(directory: str, data):
    """The Hugging Face model in ``directory`` and its checkpoint ``info``; its classes must be the data's."""
    from ..models.huggingface import describe, load_pretrained

    model = load_pretrained(directory)
    labels = getattr(model.config, "num_labels", None)
    if data is not None and hasattr(data, "classes") and labels != len(data.classes):
        raise ValueError(f"--hf {directory}: config.json has num_labels={labels} but the data has "
                         f"{len(data.classes)} classes; save the model with num_labels={len(data.classes)}")
    return model, {"model": type(model).__name__, "hf": describe(model, directory), "stage": "ann"}


def load_model(args, stages: Sequence[str] = checkpoint.STAGES, snn: bool = True, data=None):
    """``(model, info)`` from ``--checkpoint`` (an SNN checkpoint gives the QANN when ``snn=False``), or a
    fresh ``--model`` (stage 'ann'; shaped for the training set ``data`` when given, see :func:`_data_defaults`),
    or a Hugging Face model from the local directory ``--hf`` (stage 'ann')."""
    from ..models import create
    from ..rebuild import from_checkpoint

    if args.checkpoint:
        model, info = from_checkpoint(args.checkpoint, snn=snn, device=args.device)
        if info["stage"] not in stages:
            raise ValueError(f"{args.checkpoint} holds a {info['stage']} model; this command needs "
                             f"{' or '.join(stages)}")
    elif args.model and args.hf:
        raise UsageError("give --model NAME or --hf DIR, not both")
    elif args.hf and args.overrides:
        raise UsageError(f"--set changes a registry model's constructor; a --hf model's are in {args.hf}/config.json")
    elif args.hf:
        if "ann" not in stages:
            raise UsageError(f"needs a {' or '.join(stages)} --checkpoint, not a fresh --hf model")
        model, info = _hf_model(args.hf, data)
    elif args.model:
        if "ann" not in stages:
            raise UsageError(f"needs a {' or '.join(stages)} --checkpoint, not a fresh --model")
        overrides = parse_overrides(args.overrides)
        if data is not None:
            overrides = {**_data_defaults(args.model, overrides, data), **overrides}
        info = {"model": args.model, "overrides": overrides, "stage": "ann"}
        model = create(args.model, **overrides)
    else:
        raise UsageError("give --checkpoint FILE, --model NAME or --hf DIR")
    return model.to(args.device), info
