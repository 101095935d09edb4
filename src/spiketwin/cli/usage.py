"""What every part of the command line shares: the one-line usage error and small argument helpers."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit code 2. ``prog`` names the (sub)command."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes raise :class:`UsageError` (one line) instead of printing usage."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, what adds its own options to its parser, and what runs it."""

    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def require(args, name: str) -> None:
    """A :class:`UsageError` when option ``name`` is not given (on the command line or in the config file)."""
    if getattr(args, name) in (None, ""):
        raise UsageError(f"--{name.replace('_', '-')} is required (or '{name}' in the config file)")


def passed_on(rest: Sequence[str]) -> list[str]:
    """Arguments for a wrapped program (demo, benchmark), without the ``--`` that separates them."""
    rest = list(rest)
    return rest[1:] if rest[:1] == ["--"] else rest


def rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints results and writes files."""
    return int(os.environ.get("RANK", "0"))
