"""Export of spiking networks to formats that neuromorphic tools read (NIR)."""

from .nir import NIRExportError, check, from_nir, to_nir, unsupported

__all__ = ["NIRExportError", "check", "from_nir", "to_nir", "unsupported"]
