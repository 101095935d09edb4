"""The ``spiketwin`` command line: the whole journey from training to energy numbers and NIR files.

    spiketwin train --model scnn --epochs 5 --out ann.safetensors
    spiketwin energy --checkpoint ann.safetensors --json energy.json
    spiketwin export-nir --checkpoint ann.safetensors --out scnn.nir

Every subcommand has ``--help``. Exit codes: 0 success, 2 usage error (unknown flag, missing option, bad
config file), 1 failure (missing file, a model that cannot be converted or exported, ...), each with a
one-line message on stderr (``--debug`` shows the traceback). ``--config FILE`` (TOML; YAML when PyYAML is
installed) supplies any option: top-level keys apply to every subcommand that has them, a table
``[train]`` (YAML: a mapping ``train:``) to that subcommand only; flags on the command line win.

The modules: :mod:`.parser` (the parser, the options all subcommands share), :mod:`.config` (``--config``),
:mod:`.usage` (the usage error, small helpers), :mod:`.data` and :mod:`.model` (the data and model options and
what they load), one module per family of subcommands (:mod:`.training`: train, qat; :mod:`.snn`: convert,
simulate, verify; :mod:`.reports`: energy, export-nir; :mod:`.tools`: demo, bench) and :mod:`.raster`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import torch

from .config import config_defaults
from .parser import COMMANDS, TABLE, build_parser
from .usage import UsageError

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]


def _auto_device() -> str:
    """``cuda:LOCAL_RANK`` (``cuda`` = ``cuda:0`` outside torchrun) when CUDA is available, else ``cpu``."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.config is not None:  # its values become defaults, then the command line is read again over them
            parser.commands[args.command].set_defaults(**config_defaults(args.config, parser.commands, args.command))
            args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see spiketwin {args.command} --help)")
        if getattr(args, "device", None) == "auto":
            args.device = _auto_device()
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        return TABLE[args.command].run(args) or 0
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
