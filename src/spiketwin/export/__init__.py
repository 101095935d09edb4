"""Export of spiking networks to formats that neuromorphic tools read (NIR)."""

from .nir import NIRExportError, check, from_nir, to_nir, unsupported
from .nir_targets import TARGETS

__all__ = ["NIRExportError", "TARGETS", "check", "from_nir", "to_nir", "unsupported"]
