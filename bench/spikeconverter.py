"""SpikeConverter accuracy: ANN, QANN and iLIF SNN (k = 2, 1.5, 3) versus rate-coded IF at equal steps.

    python -m bench.spikeconverter [--datasets digits mnist] [--models NAME ...] [--rate-curve] [--device cpu]

For each data set and model (the bundled digits: VGG, ResNet and ViT; real MNIST: VGG and ResNet,
first 8,000 / last 2,000 of the t10k files in ``../shared/data/mnist``, skipped with a message when
absent) it trains the ANN (cached in ``runs/spikeconverter/``), then for T = 2, 4, 6, 8 steps per phase:
calibrates the 2^T-level QANN (99.99th percentile), measures it and its SNN untuned, fine-tunes it (QAT,
cached) and measures QANN and iLIF SNN with k = 2, 1.5 and 3. The classic rate-coded soft-reset IF
conversion (ANN weights, threshold = the same calibrated percentile, no fine-tuning; CNNs only) runs for
as many steps as the iLIF latency ((depth + 1) T). It also prints the schedule's latency and throughput.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import print_table, save_weights
from spiketwin.convert import to_qann
from spiketwin.data import load_digits, mnist_split
from spiketwin.models import create
from spiketwin.train import TrainConfig, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
CACHE = ROOT / "runs" / "spikeconverter"
PHASE_STEPS = (2, 4, 6, 8)
OTHER_K = (1.5, 3.0)
CNN = {"lr": 3e-3, "weight_decay": 1e-4}
VIT = {"lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.1}  # as in spiketwin.demo
SETUPS = {"digits": [("vgg_small", CNN), ("resnet_small", CNN), ("vit_digits", VIT)],
          "mnist": [("vgg_mnist", CNN), ("resnet_mnist", CNN)]}


def load_into(model: torch.nn.Module, path: Path, device: str) -> bool:
    if not path.is_file():
        return False
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device=device))
    return True


def trained(model: torch.nn.Module, path: Path, data, config: TrainConfig, device: str) -> torch.nn.Module:
    """``model`` trained with ``config`` on ``data``, or loaded from ``path`` when a previous run cached it."""
    if not load_into(model, path, device):
        fit(model, data[0], data[1], config)
        save_weights(model, path)
    return model.eval()


@torch.no_grad()
def snn_accuracy(snn, x: torch.Tensor, y: torch.Tensor, batch: int = 500, **kwargs) -> tuple[float, torch.Tensor]:
    outputs = torch.cat([snn.simulate(x[i:i + batch], **kwargs).output.cpu() for i in range(0, len(x), batch)])
    return (outputs.argmax(-1) == y).double().mean().item(), outputs


@torch.no_grad()
def outputs_of(model, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def rate_curve(qann, x: torch.Tensor, y: torch.Tensor, steps: list[int], batch: int = 500) -> list[float]:
    """Accuracy of the rate-coded network after each of ``steps`` (one run of ``max(steps)`` steps)."""
    correct = torch.zeros(max(steps))
    rate = qann.to_rate_snn()
    for i in range(0, len(x), batch):
        result = rate.simulate(x[i:i + batch], max_steps=max(steps))
        correct += (result.per_step.argmax(-1).cpu() == y[i:i + batch].cpu()).double().sum(1)
    return [correct[s - 1].item() / len(y) for s in steps]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Mean |logit difference| over mean |logit|: the conversion error of the output layer."""
    return ((got - want).abs().mean() / want.abs().mean()).item()


def load(dataset: str, data_root: Path):
    if dataset == "digits":
        return load_digits()
    root = data_root / "mnist"
    if not (root / "t10k-images-idx3-ubyte.gz").is_file() and not (root / "t10k-images-idx3-ubyte").is_file():
        print(f"\nskipping MNIST: no t10k-images-idx3-ubyte[.gz] in {root}")
        return None
    return mnist_split(root, n_train=8000)


def run(dataset: str, name: str, recipe: dict, args) -> None:
    data = load(dataset, args.data)
    if data is None:
        return
    device = args.device
    x_train, y_train, x_test, y_test = (t.to(device) for t in data)
    epochs, qat_epochs = (30, 4) if dataset == "digits" else (8, 2)
    torch.manual_seed(0)
    ann = create(name).to(device)
    tag = f"{dataset}_{name}_e{epochs}"
    trained(ann, CACHE / f"{tag}_ann.safetensors", (x_train, y_train),
            TrainConfig(epochs=epochs, progress=False, **recipe), device)
    ann_acc = evaluate(ann, x_test, y_test)
    calibration = x_train[:512]
    if args.rate_curve and recipe is CNN:
        steps = [8, 16, 32, 64, 128, 256, 512]
        curve = rate_curve(to_qann(ann, levels=2, neuron="ilif", calibration=calibration), x_test, y_test, steps)
        print_table(f"{dataset} / {name}: rate-coded IF accuracy (%) versus steps (ANN {100 * ann_acc:.2f} %)",
                    ["steps", *map(str, steps)], [["accuracy", *(f"{100 * a:.2f}" for a in curve)]])
    rows, err_rows, schedule = [], [], []
    for T in PHASE_STEPS:
        qann = to_qann(ann, levels=2 ** T, neuron="ilif", calibration=calibration)
        qann_cal = evaluate(qann, x_test, y_test)
        snn_cal, _ = snn_accuracy(qann.to_snn(), x_test, y_test)
        try:  # classic: ANN weights, calibrated θ (ReLU CNNs only)
            rate_acc, _ = snn_accuracy(qann.to_rate_snn(), x_test, y_test)
        except TypeError:
            rate_acc = None
        trained(qann, CACHE / f"{tag}_T{T}_qat{qat_epochs}.safetensors", (x_train, y_train),
                TrainConfig(epochs=qat_epochs, lr=5e-4, weight_decay=1e-4, warmup_epochs=0.0, progress=False),
                device)
        qann_acc = evaluate(qann, x_test, y_test)
        want = outputs_of(qann, x_test)
        snn = qann.to_snn()
        acc = {}
        errors = {}
        for k in (2.0, *OTHER_K):
            acc[k], out = snn_accuracy(snn, x_test, y_test, k=k)
            errors[k] = relative_error(out, want)
            if k == 2.0:
                agree = (out.argmax(-1) == want.argmax(-1)).double().mean().item()
        steps = snn.latency
        rows.append([T, steps, f"{100 * qann_cal:.2f}", f"{100 * snn_cal:.2f}", f"{100 * qann_acc:.2f}",
                     f"{100 * acc[2.0]:.2f}", f"{100 * agree:.2f}", f"{100 * (acc[2.0] - ann_acc):+.2f}",
                     *(f"{100 * acc[k]:.2f}" for k in OTHER_K), "n/a" if rate_acc is None else f"{100 * rate_acc:.2f}"])
        err_rows.append([T, *(f"{errors[k]:.2e}" for k in (2.0, *OTHER_K))])
        schedule.append([T, snn.depth, steps, T, f"{steps / T:.0f}x"])
    title = f"{dataset} / {name}: ANN {100 * ann_acc:.2f} %, {len(y_test)} test images, accuracy in %"
    print_table(title, ["T", "steps", "QANN cal", "SNN cal", "QANN QAT", "iLIF k=2", "k=2 = QANN",
                        "k=2 - ANN", *(f"iLIF k={k:g}" for k in OTHER_K), "rate IF"], rows)
    print_table(f"{dataset} / {name}: output error |SNN - QANN| / |QANN| (mean over logits) per amplification k",
                ["T", *(f"k={k:g}" for k in (2.0, *OTHER_K))], err_rows)
    print_table(f"{dataset} / {name}: schedule (steps per sample)",
                ["T", "depth D", "latency (D+1)T", "pipelined: steps between samples", "throughput gain"],
                schedule)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=sorted(SETUPS))
    parser.add_argument("--models", nargs="+", help="only these models (default: all of each data set's)")
    parser.add_argument("--rate-curve", action="store_true",
                        help="also print the rate-coded network's accuracy after 8 ... 512 steps")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding mnist/ (default ../shared/data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        for name, recipe in SETUPS[dataset]:
            if args.models is None or name in args.models:
                run(dataset, name, recipe, args)


if __name__ == "__main__":
    main()
