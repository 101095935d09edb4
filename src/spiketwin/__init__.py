"""spiketwin: spiking transformers in PyTorch.

Exact conversion of quantized Transformers into SNNs (SpikeZIP-TF), iLIF conversion with temporal
separation (SpikeConverter) and directly trained spiking transformers (Spikformer).
"""

from .base import StatefulModule, TimeFold, reset, set_step_mode
from .simulate import SimResult, simulate

__version__ = "0.1.0"

__all__ = ["SimResult", "StatefulModule", "TimeFold", "__version__", "reset", "set_step_mode", "simulate"]
