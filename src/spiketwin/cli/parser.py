"""The parser of the ``spiketwin`` command line: the options every subcommand shares, and the subcommands.

Each family of subcommands lives in its own module and declares, per subcommand, a :class:`~.usage.Command`
(help line, its options, its handler); :data:`TABLE` puts them in the order ``spiketwin --help`` lists them.
"""

from __future__ import annotations

import argparse

from . import reports, snn, tools, training
from .usage import Command, Parser

TABLE: dict[str, Command] = {"demo": tools.DEMO, **training.COMMANDS, **snn.COMMANDS, **reports.COMMANDS,
                             "bench": tools.BENCH}
COMMANDS = tuple(TABLE)


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


class CommandLineParser(Parser):
    """The top-level parser; ``commands`` maps each subcommand's name to its parser."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}


def build_parser() -> CommandLineParser:
    from .. import __version__

    parser = CommandLineParser(prog="spiketwin", description="spiketwin: spiking transformers, from training to "
                                                             "energy numbers and NIR files. Every COMMAND has --help.")
    parser.add_argument("--version", action="version", version=f"spiketwin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in TABLE.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        _common(p)
        if name not in ("demo", "bench"):  # the demo and the benchmarks set their own threads (--threads after --)
            _threads(p)
        command.add_options(p)
        parser.commands[name] = p
    return parser
