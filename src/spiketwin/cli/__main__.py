"""``python -m spiketwin.cli ARGS`` is ``spiketwin ARGS``."""

import sys

from . import main

sys.exit(main())
