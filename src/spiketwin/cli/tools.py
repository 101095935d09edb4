"""``spiketwin demo`` and ``spiketwin bench``: commands that hand their arguments to another program."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .usage import Command, UsageError, passed_on


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("demo_args", nargs=argparse.REMAINDER,
                   help="the demo's own options after --, e.g. spiketwin demo -- --epochs 5 (-- --help lists them)")


def cmd_demo(args) -> None:
    from .. import demo

    demo.main(passed_on(args.demo_args))


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="benchmark module, e.g. lif")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


SOURCE = Path(__file__).resolve().parents[2]
"""The folder this ``spiketwin`` package is imported from (``src`` in a clone of the repository)."""


def _repository() -> Path:
    """The repository whose ``bench/`` runs: the current directory when it has one, else the clone this package
    is imported from (an editable install)."""
    for root in (Path.cwd(), SOURCE.parent):
        if (root / "bench" / "__main__.py").is_file():
            return root
    raise FileNotFoundError("spiketwin bench runs the benchmarks of the repository's bench/ folder, which an "
                            "installed package does not carry: run it in a clone of the repository (its root)")


def _python(root: Path, *argv: str, capture: bool = False) -> subprocess.CompletedProcess:
    """``python ARGV`` in ``root``, importing this same ``spiketwin`` package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SOURCE), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=capture, text=capture)


def cmd_bench(args) -> int:
    """List the benchmarks (no name), or run ``python -m bench.NAME ARGS`` in the repository; returns its exit
    code."""
    root = _repository()
    listed = _python(root, "-m", "bench", "--list", capture=True)
    if listed.returncode != 0:
        raise RuntimeError(f"python -m bench --list failed in {root}: {listed.stderr.strip().splitlines()[-1:]}")
    names = listed.stdout.split()
    if not args.name:
        print("benchmarks: " + ", ".join(names) + "  (spiketwin bench NAME [args...])")
        return 0
    if args.name not in names:
        raise UsageError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    return _python(root, "-m", f"bench.{args.name}", *passed_on(args.bench_args)).returncode


DEMO = Command("train, quantize, convert and verify a small ViT on the bundled digits (a few minutes)", _demo_options,
               cmd_demo)
BENCH = Command("run a benchmark from the repository's bench/ folder (no name: list them)", _bench_options, cmd_bench)
