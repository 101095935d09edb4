"""``python -m spiketwin ...`` is the ``spiketwin`` command line."""

import sys

from .cli import main

sys.exit(main())
