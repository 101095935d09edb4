"""Test accuracy and per-layer spike rates of a model trained with ``spiketwin train --run-dir DIR``.

    python -m bench.spike_rates DIR [--batch 250]

Reads ``DIR/run.json`` (model name, overrides, data options) and the model tensors of
``DIR/checkpoint.safetensors``, evaluates on the run's test split and prints, for every LIF neuron layer, the
fraction of (time step, sample, neuron) entries that spiked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import print_table
from spiketwin import reset
from spiketwin.models import create
from spiketwin.neurons import LIF
from spiketwin.cli.data import first_samples, load_data
from spiketwin.train import CHECKPOINT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the --run-dir folder of a training run")
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args(argv)
    run_dir = Path(args.run)
    run = json.loads((run_dir / "run.json").read_text())
    model = create(run["info"]["model"], **run["info"]["overrides"])
    from safetensors.torch import load_file

    state = {k[len("model."):]: v for k, v in load_file(str(run_dir / CHECKPOINT)).items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    a = run["args"]
    x, y = first_samples(load_data(argparse.Namespace(**a))[1])
    spikes: dict[str, list[float]] = {}

    def hook(name):
        def record(module, inputs, output):
            s = spikes.setdefault(name, [0.0, 0.0])
            s[0] += float(output.sum())
            s[1] += output.numel()
        return record

    for name, m in model.named_modules():
        if isinstance(m, LIF):
            m.register_forward_hook(hook(name))
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), args.batch):
            correct += int((model(x[i:i + args.batch]).argmax(-1) == y[i:i + args.batch]).sum())
            reset(model)
    total = [sum(s[0] for s in spikes.values()), sum(s[1] for s in spikes.values())]
    rows = [[name, s[0] / s[1]] for name, s in spikes.items()] + [["all LIF layers", total[0] / total[1]]]
    print_table(f"{run['info']['model']} {run['info']['overrides']} on {a['data']} test ({len(y)} samples): "
                f"accuracy {correct / len(y):.4f}", ["LIF layer", "spike rate"], rows)


if __name__ == "__main__":
    main()
