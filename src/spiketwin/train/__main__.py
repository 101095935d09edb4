"""``python -m spiketwin.train ARGS`` is ``spiketwin train ARGS``: one parser, :mod:`spiketwin.cli`."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
