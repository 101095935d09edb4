"""Counting conventions: what an energy figure counts, as one object, and the presets that reproduce each reference.

Published SNN energy figures differ mostly in what they count, not in arithmetic (docs/energy.md has the table of
which paper used which). A :class:`Convention` names every choice; :data:`CONVENTIONS` holds the presets:

- ``spiketwin``: an analog first layer costs MACs once per distinct input (a static image repeated T times is
  computed once; SpikeZIP-TF's image at step 1 once), every other layer accumulates once per spike it receives
  (an ST-BIF burst of k spikes is k), activation products by per-step rate products, no bias, no extra layers.
- ``spikingformer``: Spikingformer's energy script ("calc 2"; the one Spikformer's authors point to): a layer
  whose input is not binary costs full MACs (with bias) at every step, binary inputs accumulate by their rate,
  attention by the formula ``T H N d^2 (min(r_k, r_v) + r_q)``.
- ``spikingformer-calc1``: the same script's "calc 1": integer inputs 0..30 (residual sums) accumulate by their
  sum (a 2 costs two accumulates).
- ``syops``: syops-counter 0.0.5: as ``spikingformer`` without attention products, plus BatchNorm (2 ops per
  element), pooling (1 per element) and neuron updates (1 accumulate per input element); a Linear's bias once
  per call.
- ``spikezip``: SpikeZIP-TF's fork of that script: the spike test is ternary (``{0, ±a}``) and made per step,
  attention by its own formula, plus LayerNorm (2 per element) and neuron updates.
- ``spikingjelly``: SpikingJelly 2.0's op counter: a binary operand gives exact synaptic uses (conv borders
  included, coincident spike pairs for products), anything else full MACs, no bias, BatchNorm in eval mode
  (one MAC per element for the affine, one accumulate per element and per channel for the normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

ANALOG_RULES = ("first", "binary", "counts", "ternary")
ACCUMULATE_RULES = ("spikes", "values", "exact")
PRODUCT_RULES = ("rates", "exact", "spikingformer", "spikezip", "none")
BIAS_RULES = ("none", "outputs", "call")
EXTRAS = ("batchnorm", "batchnorm-eval", "layernorm", "pooling", "neurons")


@dataclass(frozen=True)
class Convention:
    """How operations are counted. Every weight layer (Linear, Conv) and activation product is counted; the
    fields say how.

    Attributes:
        name: the name printed in the table and stored in JSON / CSV.
        analog: which weight-layer inputs are analog values (cost MACs) rather than spikes (cost accumulates):
            ``"first"``: only the first counted layer, unless its input is spike-coded (every non-zero value of
            one magnitude), or the layers listed in ``report(analog=...)``; ``"binary"``: any input not in
            ``{0, 1}``; ``"counts"``: any input not of integers in ``[0, max_count]``; ``"ternary"``: any input
            not in ``{0, ±a}`` for one ``a`` (an all-zero input is spikes at rate 0).
        test_per: the analog test is made on each ``"call"`` of the layer (the whole ``[T*B, ...]`` tensor of
            a sequence call, as a forward hook sees it) or on each ``"step"``.
        analog_steps: an analog layer costs its MACs at every step it runs (``"all"``) or only at the steps
            whose input differs from the previous step's and is non-zero (``"changed"``: a static image repeated
            T times once); ``"changed"`` needs ``analog="first"``.
        accumulates: what a spike input costs per fan-out: ``"spikes"``: one accumulate per spike, an ST-BIF
            neuron's graded spike ``k θ`` (read from the layer's input when it is that neuron's output) counting
            ``|k|``, any other non-zero value one; ``"values"``: the input's values (``Σ x / numel`` of the
            syops-style counters: a residual sum of 2 costs two); ``"exact"``: the exact number of weight uses
            (non-zero inputs times the outputs they reach, convolution borders included).
        products: activation x activation products ``a @ b``: ``"rates"``: ``FLOPs Σ_t r_a(t) r_b(t)``;
            ``"exact"``: coincident non-zero pairs when both operands are binary, the binary operand's non-zeros
            times the other side when one is, full MACs when none is; ``"spikingformer"`` / ``"spikezip"``: those
            scripts' attention formulas (the two products of one parent module are Q Kᵀ and A V); ``"none"``.
        bias: ``"none"``; ``"outputs"``: one more operation per output element of a layer with a bias;
            ``"call"``: a Linear's ``out_features`` once per call (syops-counter), a Conv's per output element.
        extras: other layers counted: ``"batchnorm"`` (2 ops per element if affine, else 1; MACs unless the
            input passes the analog test, then accumulates by rate), ``"batchnorm-eval"`` (a MAC per element if
            affine, plus an accumulate per element and per channel), ``"layernorm"`` (as ``"batchnorm"``),
            ``"pooling"`` (1 op per input element, as ``"batchnorm"``), ``"neurons"`` (one accumulate per input
            element of each spiking neuron per step).
        max_count: the largest spike count ``analog="counts"`` accepts.
        source: where the rules come from.
    """

    name: str
    analog: str = "first"
    test_per: str = "call"
    analog_steps: str = "changed"
    accumulates: str = "spikes"
    products: str = "rates"
    bias: str = "none"
    extras: tuple[str, ...] = ()
    max_count: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        for field_name, allowed in (("analog", ANALOG_RULES), ("test_per", ("call", "step")),
                                    ("analog_steps", ("changed", "all")), ("accumulates", ACCUMULATE_RULES),
                                    ("products", PRODUCT_RULES), ("bias", BIAS_RULES)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"Convention {self.name!r}: {field_name} must be one of {allowed}, "
                                 f"got {getattr(self, field_name)!r}")
        unknown = set(self.extras) - set(EXTRAS)
        if unknown:
            raise ValueError(f"Convention {self.name!r}: unknown extras {sorted(unknown)}; known: {EXTRAS}")
        if self.analog_steps == "changed" and self.analog != "first":
            raise ValueError(f"Convention {self.name!r}: analog_steps='changed' needs analog='first' (a value "
                             "test decides per call or step, so every analog call or step costs its MACs)")


_SYOPS_STYLE = dict(analog="binary", test_per="call", analog_steps="all", accumulates="values")

#: The named presets (``report(model, x, convention=NAME)``, ``spiketwin energy --convention NAME``).
CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("spiketwin", source="spiketwin (SPEC 'Energy'; docs/energy.md)"),
    Convention("spikingformer", **_SYOPS_STYLE, products="spikingformer", bias="outputs",
               source="Spikingformer energy_consumption_calculation (Nspks_max = 1, 'calc 2')"),
    Convention("spikingformer-calc1", **{**_SYOPS_STYLE, "analog": "counts"}, products="spikingformer",
               bias="outputs", max_count=30,
               source="Spikingformer energy_consumption_calculation (Nspks_max = 30, 'calc 1')"),
    Convention("syops", **_SYOPS_STYLE, products="none", bias="call", extras=("batchnorm", "pooling", "neurons"),
               source="syops-counter 0.0.5 (PyPI)"),
    Convention("spikezip", **{**_SYOPS_STYLE, "analog": "ternary", "test_per": "step"}, products="spikezip",
               bias="outputs", extras=("layernorm", "neurons"),
               source="SpikeZIP-TF energy_consumption_calculation (fork of Spikingformer's)"),
    Convention("spikingjelly", analog="binary", test_per="call", analog_steps="all", accumulates="exact",
               products="exact", bias="none", extras=("batchnorm-eval",),
               source="SpikingJelly 2.0 activation_based.op_counter (MACCounter + ACCounter)"),
)}


def get_convention(convention: str | Convention) -> Convention:
    """A preset by name, or ``convention`` itself."""
    if isinstance(convention, Convention):
        return convention
    if convention not in CONVENTIONS:
        raise ValueError(f"energy: convention must be a Convention or one of {sorted(CONVENTIONS)}, "
                         f"got {convention!r}")
    return CONVENTIONS[convention]
