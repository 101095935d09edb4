"""``python -m spiketwin.train ARGS`` is ``spiketwin train ARGS``: one parser, :mod:`spiketwin.cli`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """``spiketwin train ARGV`` (``ARGV`` defaults to this program's arguments); returns the exit code."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
