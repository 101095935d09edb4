"""Energy per arithmetic operation: the 45 nm table every SNN energy figure is priced with."""

from __future__ import annotations

#: Energy per arithmetic operation in pJ, 45 nm CMOS at 0.9 V, from the table of operation energies in
#: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, pp. 10-14,
#: doi:10.1109/ISSCC.2014.6757323. Checked against two independent reproductions of that table (docs/energy.md).
HOROWITZ_45NM: dict[str, dict[str, float]] = {
    "fp32": {"mult": 3.7, "add": 0.9},
    "fp16": {"mult": 1.1, "add": 0.4},
    "int32": {"mult": 3.1, "add": 0.1},
    "int8": {"mult": 0.2, "add": 0.03},
}

#: ``(E_MAC, E_AC)`` in pJ per number format: a MAC is one multiply plus one add, an AC one add
#: (fp32: 4.6 / 0.9, the SPEC's and the SNN papers' figures).
PRESETS: dict[str, tuple[float, float]] = {
    name: (round(op["mult"] + op["add"], 6), op["add"]) for name, op in HOROWITZ_45NM.items()
}


def energy_per_op(preset: str, e_mac: float | None, e_ac: float | None) -> tuple[float, float]:
    """``(E_MAC, E_AC)`` in pJ: ``preset``'s figures unless overridden."""
    if preset not in PRESETS:
        raise ValueError(f"energy.report: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return (PRESETS[preset][0] if e_mac is None else float(e_mac),
            PRESETS[preset][1] if e_ac is None else float(e_ac))
