"""`make demo`: SpikeZIP-TF end to end on the embedded default data set (scikit-learn's bundled digits).

Trains a small ReLU ViT, fine-tunes its quantized twin (QAT), converts it into an SNN, proves the SNN
equivalent to the QANN (float64, layer by layer, a few samples; float32 prediction agreement on the whole
test set), and prints ANN / QANN / SNN accuracy, settle steps and accuracy at T = 1, 2, 4, ...; then the
energy report of the SNN beside its ANN (:func:`spiketwin.energy.report`, the table ``spiketwin energy``
prints) and the accuracy-vs-T curve as a PNG (:func:`spiketwin.plots.accuracy_vs_steps`, needs matplotlib).

    python -m spiketwin.demo [--epochs 40] [--qat-epochs 15] [--levels 16] [--energy-samples 64]
                             [--energy-steps 64] [--out out] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from .convert import to_qann, to_snn, verify
from .data import load_digits
from .energy import report as energy_report
from .energy import simulation_run
from .models import create
from .simulate import evaluate_per_step
from .train import TrainConfig, evaluate, fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=15)
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--energy-samples", type=int, default=64,
                        help="test images the energy report averages over (default 64, as spiketwin energy)")
    parser.add_argument("--energy-steps", type=int, default=64,
                        help="time steps the energy report runs (default 64, as spiketwin energy --max-steps)")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: for a model this small, more threads cost more than they "
                             "give, and far more on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits()
    print(f"digits: {len(y_train)} train / {len(y_test)} test images, 8x8")

    ann = create("vit_digits")
    print(f"1. ANN: ViT (ReLU) {sum(p.numel() for p in ann.parameters()):,} parameters, {args.epochs} epochs")
    fit(ann, x_train, y_train, TrainConfig(epochs=args.epochs, lr=2e-3, weight_decay=0.05, label_smoothing=0.1))
    ann_acc = evaluate(ann, x_test, y_test)

    print(f"2. QANN: {args.levels} levels, quantization-aware fine-tuning for {args.qat_epochs} epochs")
    qann = to_qann(ann, levels=args.levels)
    fit(qann, x_train, y_train, TrainConfig(epochs=args.qat_epochs, lr=5e-4, weight_decay=0.05, seed=1))
    qann_acc = evaluate(qann, x_test, y_test)

    print("3. SNN: convert and simulate the whole test set (float32, per-sample early exit)")
    snn = to_snn(qann)
    result = evaluate_per_step(snn, x_test, y_test, batch_size=120, max_steps=512, progress=True)
    with torch.no_grad():
        qann_pred = qann.eval()(x_test).argmax(-1)
    snn_acc = (result.prediction == y_test).double().mean().item()
    agree = (result.prediction == qann_pred).double().mean().item()

    print("4. Proof of equivalence in float64 (8 test images, every layer's summed output vs the QANN's):")
    qann64 = copy.deepcopy(qann).double()
    report = verify(qann64, to_snn(qann64), x_test[:8].double())
    print(report)

    settle = result.settle_step.double()
    curve = result.accuracy
    print("\nResults on the digits test set")
    print(f"  ANN  accuracy {100 * ann_acc:6.2f} %")
    print(f"  QANN accuracy {100 * qann_acc:6.2f} %   ({args.levels} levels)")
    print(f"  SNN  accuracy {100 * snn_acc:6.2f} %   (float32; predictions equal to the QANN's on "
          f"{100 * agree:.2f} % of samples)")
    print(f"  settle steps: median {settle.median().item():g}, max {int(settle.max())}, "
          f"unsettled {int((settle < 0).sum())}")
    print(f"  float64 equivalence: {'OK' if report.ok else 'FAILED'} (max relative difference {report.max_rel:.1e})")
    ts = [t for t in (2 ** i for i in range(12)) if t <= len(curve)]
    print("  accuracy at T:  " + "  ".join(f"T={t}: {100 * curve[t - 1].item():.1f}%" for t in ts))

    print(f"\n5. Energy of the SNN beside its ANN ({args.energy_samples} test images, {args.energy_steps} steps; "
          "the report of spiketwin energy):")
    print(energy_report(snn, x_test[:args.energy_samples], run=simulation_run(args.energy_steps)).table())

    plot = args.out / "spikezip_digits_accuracy_vs_T.png"
    try:
        from .plots import accuracy_vs_steps

        accuracy_vs_steps(curve, plot, reference={"ANN": ann_acc, "QANN": qann_acc},
                          title="SpikeZIP-TF on digits: accuracy if the SNN stopped at T")
        print(f"\nplot: {plot}")
    except ImportError as e:
        print(f"\n{e}: skipping the plot")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
