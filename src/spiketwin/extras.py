"""Optional dependencies: import one by name, or fail with the ``pip install`` line of the extra that has it.

The core needs torch and numpy only; everything else comes with an extra of ``pyproject.toml``
(``io``: safetensors, ``plot``: matplotlib, ``data``: scikit-learn, ``vision``: Pillow, ``nlp``: transformers
and tokenizers, ``nir``: nir and nirtorch).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_DISTRIBUTIONS = {"PIL": "Pillow", "sklearn": "scikit-learn"}  # where the import name is not the package's


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import and return ``module`` (a dotted name); if it is missing, raise an ``ImportError`` saying that
    ``what`` needs its package and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ImportError(f"{what} needs {_DISTRIBUTIONS.get(top, top)}: pip install 'spiketwin[{extra}]'") from e
