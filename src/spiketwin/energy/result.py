"""What a report holds and how it prints: per-layer rows, totals, a table, JSON and CSV, and a comparison."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils import atomic_write


@dataclass
class LayerEnergy:
    """One counted module. ``flops`` is per sample and step; ops and energies are per sample (whole run).

    ``sops`` are the accumulates the convention counts (with ``accumulates="spikes"`` every spike: an ST-BIF
    burst ``k θ`` is ``|k|`` accumulates per fan-out); ``sop_events`` the same synaptic operations with each
    non-zero input as one event (a graded spike once: the view of chips with graded spikes, e.g. Loihi 2).
    """

    name: str
    kind: str  # "linear", "conv", "product", or an extra: "batchnorm", "layernorm", "pooling", "neurons"
    coding: str  # "spike", "analog" or "mixed" (some calls or steps analog)
    steps: int  # time steps the module runs (1 for a once-per-sequence layer)
    flops: float
    rate: float  # mean over steps of the fraction of non-zero inputs (product: of operand a)
    rate_per_step: list[float]
    sops: float
    macs: float
    energy_pj: float
    ann_energy_pj: float
    rate_b: float | None = None  # products: operand b
    rate_b_per_step: list[float] | None = None
    sops_exact: float | None = None  # products: exact number of terms with both operands non-zero
    sop_events: float = 0.0


@dataclass
class EnergyReport:
    """Per-layer counts and totals under one convention; ``table()``, ``to_json()``, ``to_csv()`` render it."""

    layers: list[LayerEnergy]
    T: int
    batch: int
    e_mac: float
    e_ac: float
    convention: str = "spiketwin"
    totals: dict = field(init=False)

    def __post_init__(self) -> None:
        macs = sum(layer.macs for layer in self.layers)
        sops = sum(layer.sops for layer in self.layers)
        flops = sum(layer.flops for layer in self.layers)
        snn = self.e_mac * macs + self.e_ac * sops
        ann = self.e_mac * flops
        self.totals = {"flops": flops, "macs": macs, "sops": sops,
                       "sop_events": sum(layer.sop_events for layer in self.layers), "energy_pj": snn,
                       "ann_energy_pj": ann, "ratio_ann_over_snn": ann / snn if snn > 0 else math.inf}

    def to_dict(self) -> dict:
        return {"convention": self.convention, "T": self.T, "batch": self.batch, "e_mac_pj": self.e_mac,
                "e_ac_pj": self.e_ac, "layers": [asdict(layer) for layer in self.layers],
                "totals": dict(self.totals)}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text(path, text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per layer (per-step rates joined by ``;``), then a ``total`` row; each names the convention."""
        text = csv_text([self])
        if path is not None:
            write_text(path, text)
        return text

    def table(self) -> str:
        """A plain-text table: one line per layer, then the totals and the ANN / SNN energy ratio."""
        events = any(not math.isclose(x.sop_events, x.sops) for x in self.layers)
        header = ["layer", "kind", "input", "T", "FLOPs", "rate", "SOPs"] + ["events"] * events + \
            ["MACs", "E_SNN", "E_ANN"]
        rows = []
        for x in self.layers:
            rate = f"{x.rate:.3f}" if x.rate_b is None else f"{x.rate:.3f}x{x.rate_b:.3f}"
            rows.append([x.name, x.kind, x.coding, str(x.steps), _si(x.flops), rate, _si(x.sops)] +
                        [_si(x.sop_events)] * events + [_si(x.macs), _joules(x.energy_pj), _joules(x.ann_energy_pj)])
        t = self.totals
        rows.append(["total", "", "", "", _si(t["flops"]), "", _si(t["sops"])] + [_si(t["sop_events"])] * events +
                    [_si(t["macs"]), _joules(t["energy_pj"]), _joules(t["ann_energy_pj"])])
        lines = _align([header] + rows, left=3)
        lines.insert(-1, lines[1])
        lines.append(f"per sample, T={self.T}, E_MAC={self.e_mac} pJ, E_AC={self.e_ac} pJ, convention "
                     f"{self.convention}: SNN {_joules(t['energy_pj'])}, ANN {_joules(t['ann_energy_pj'])}, "
                     f"ANN/SNN = {t['ratio_ann_over_snn']:.2f}x")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


_CSV_FIELDS = ["convention", "name", "kind", "coding", "steps", "flops", "rate", "rate_b", "sops", "sop_events",
               "sops_exact", "macs", "energy_pj", "ann_energy_pj", "rate_per_step", "rate_b_per_step"]


def csv_text(reports: list[EnergyReport]) -> str:
    """The reports' rows, one after the other, in one CSV."""
    out = io.StringIO()
    writer = csv.DictWriter(out, _CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        for layer in r.layers:
            row = {k: v for k, v in asdict(layer).items() if k in _CSV_FIELDS}
            for key in ("rate_per_step", "rate_b_per_step"):
                row[key] = "" if row[key] is None else ";".join(f"{v:.6g}" for v in row[key])
            writer.writerow({"convention": r.convention, **row})
        t = r.totals
        writer.writerow({"convention": r.convention, "name": "total", "flops": t["flops"], "sops": t["sops"],
                         "sop_events": t["sop_events"], "macs": t["macs"], "energy_pj": t["energy_pj"],
                         "ann_energy_pj": t["ann_energy_pj"]})
    return out.getvalue()


def comparison_table(reports: dict[str, EnergyReport]) -> str:
    """One line per convention: MACs, accumulates, SOP events, SNN and ANN energy, their ratio (per sample)."""
    header = ["convention", "MACs", "ACs", "SOP events", "E_SNN", "E_ANN", "ANN/SNN"]
    rows = [[name, _si(r.totals["macs"]), _si(r.totals["sops"]), _si(r.totals["sop_events"]),
             _joules(r.totals["energy_pj"]), _joules(r.totals["ann_energy_pj"]),
             f"{r.totals['ratio_ann_over_snn']:.2f}x"] for name, r in reports.items()]
    return "\n".join(_align([header] + rows, left=1))


def _align(rows: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell (the first ``left`` left-aligned), a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _scaled(value: float, units: tuple[str, str, str, str]) -> str:
    """``value`` in the largest of ``units`` (x1, x1e3, x1e6, x1e9) that keeps it at least 1, 3 digits."""
    for power in (3, 2, 1):
        if abs(value) >= 1000 ** power:
            return f"{value / 1000 ** power:.3g}{units[power]}"
    return f"{value:.3g}{units[0]}"


def _si(value: float) -> str:
    return _scaled(value, ("", "k", "M", "G"))


def _joules(pj: float) -> str:
    return _scaled(pj, (" pJ", " nJ", " uJ", " mJ"))
