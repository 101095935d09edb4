"""``python -m bench [NAME ...]`` (``make bench``): run the named benchmarks, all of them when none is named;
``python -m bench --list`` prints their names (what ``spiketwin bench`` offers).

Each benchmark is a module of this folder with a ``main(argv)`` that prints its own table; run one alone
with ``python -m bench.NAME --help`` to see its options.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench

HELPERS = ("common", "__main__", "sj_sides")


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in HELPERS)


def main(argv: list[str]) -> None:
    if argv == ["--list"]:
        print("\n".join(names()))
        return
    chosen = argv or names()
    unknown = [n for n in chosen if n not in names()]
    if unknown:
        sys.exit(f"bench: unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names())}")
    for name in chosen:
        print(f"\n=== bench.{name}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"bench.{name}").main([])
        print(f"=== bench.{name} done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
