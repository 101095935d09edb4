"""Export of spiking networks to formats that neuromorphic tools read (NIR)."""

from .nir import NIRExportError, from_nir, to_nir, unsupported

__all__ = ["NIRExportError", "from_nir", "to_nir", "unsupported"]
