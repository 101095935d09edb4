"""Plots: each writes a non-empty PNG (Agg canvas, no display needed); bad arguments get clear errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib", reason="plots need the 'plot' extra (matplotlib)")

from spiketwin import plots  # noqa: E402
from spiketwin import set_step_mode  # noqa: E402
from spiketwin.energy import report  # noqa: E402
from spiketwin.neurons import LIF  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_every_plot_writes_a_png(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), LIF(), torch.nn.Linear(16, 4), LIF(v_threshold=0.5))
    x = torch.rand(8, 5, 6) * 3
    spikes = plots.record(model, x, "1")
    assert spikes.shape == (8, 5, 16) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    paths = [
        plots.accuracy_vs_steps(torch.linspace(0.1, 0.9, 8), tmp_path / "acc.png", reference={"QANN": 0.9}),
        plots.accuracy_vs_steps({"k=2": [0.5, 0.7], "k=3": [0.4, 0.6]}, tmp_path / "sub" / "acc2.png"),
        plots.firing_rates(report(model, x), tmp_path / "rates.png"),
        plots.spike_raster(spikes, tmp_path / "raster.png", neurons=[0, 3, 5]),
        plots.spike_raster(torch.tensor([[1.0, -1], [0, 1]]).unsqueeze(1), tmp_path / "bipolar.png"),
        plots.settle_histogram(torch.tensor([3, 5, 5, 9, -1]), tmp_path / "settle.png"),
    ]
    assert all(is_png(p) for p in paths)


def test_record_joins_chunks_and_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), LIF())
    x = torch.rand(8, 5, 6) * 3

    def stepwise(m, seq):
        set_step_mode(m, "s")
        for x_t in seq:
            m(x_t)
        set_step_mode(m, "m")

    whole = plots.record(model, x, "1")
    assert torch.equal(plots.record(model, x, "1", run=lambda m, seq: [m(seq[:3]), m(seq[3:])]), whole)
    assert torch.equal(plots.record(model, x, "1", run=stepwise), whole)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="PNG"):
        plots.settle_histogram(torch.tensor([1, 2]), tmp_path / "settle.jpg")
    with pytest.raises(ValueError, match="neuron indices"):
        plots.spike_raster(torch.zeros(4, 2, 3), tmp_path / "r.png", neurons=[7])
    with pytest.raises(KeyError, match="no module 'nope'"):
        plots.record(torch.nn.Sequential(LIF()), torch.zeros(2, 1, 3), "nope")
