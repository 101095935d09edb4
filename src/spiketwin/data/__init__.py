"""Data sets read from local files (never downloaded) and the embedded default (scikit-learn's digits).

Every loader returns float tensors ``x`` (``[N, C, H, W]``, scaled to ``[0, 1]``) and int64 labels ``y``.
"""

from .digits import load_digits
from .mnist import load_mnist, mnist_split

__all__ = ["load_digits", "load_mnist", "mnist_split"]
