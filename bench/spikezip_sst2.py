"""SpikeZIP-TF on real SST-2: Hugging Face RoBERTa and BERT trained from scratch, QAT at 16 levels, converted.

    python -m bench.spikezip_sst2 [--models roberta_sst2_small bert_sst2_small] [--epochs 2] [--qat-epochs 1]
                                  [--levels 16] [--retrain]

Trains a WordPiece tokenizer and, for each model (Hugging Face's ``RobertaForSequenceClassification`` and
``BertForSequenceClassification`` themselves: 2 layers, hidden 64, 4 heads, ReLU), trains it on the SST-2
training split (GLUE TSV from ``../shared/data/sst2``), fine-tunes its QANN (the conversion engine), converts
it, and runs the exact-state SNN on the 872 dev sentences in float64 and in float32 (logits bit-identical to the
QANN's), plus the float32 and bfloat16 agreement. Prints ANN / QANN / SNN dev accuracy, the SNN-vs-QANN
agreement per sentence, settle steps and accuracy versus T (all from one SNN run). Trained weights are cached
under ``runs/spikezip_sst2/<settings>/`` (safetensors), so a second run only converts and simulates.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from bench.common import print_table, save_weights
from spiketwin import simulate
from spiketwin.convert import to_qann, to_snn
from spiketwin.data.text import encode, load_sst2, load_tokenizer, train_tokenizer
from spiketwin.models import create
from spiketwin.train import TrainConfig, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "sst2"


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def train_or_load(model, path: Path, x, y, config: TrainConfig, what: str, retrain: bool) -> float | str:
    """Train ``model`` (or load its cached weights); returns the training seconds (``"cached"`` when loaded)."""
    if path.is_file() and not retrain:
        load_weights(model, path)
        print(f"{what}: loaded {path.relative_to(ROOT)}")
        return "cached"
    start = time.perf_counter()
    for record in fit(model, x, y, config):
        print(f"{what} epoch {record['epoch']}: loss {record['loss']:.4f}")
    seconds = time.perf_counter() - start
    save_weights(model, path)
    return seconds


def settings_key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def sorted_batches(n_tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Indices grouped by sentence length (less padding per batch)."""
    order = n_tokens.argsort(stable=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def run_snn(qann, dev: dict, batch_size: int, max_steps: int):
    """Convert ``qann`` and simulate the dev set in its dtype; returns SNN logits, QANN logits, settle steps,
    per-step logits and the simulation seconds."""
    snn = to_snn(qann)
    n, dtype = len(dev["input_ids"]), next(qann.parameters()).dtype
    snn_out = torch.zeros(n, 2, dtype=dtype)  # logits in the QANN's dtype
    qann_out = torch.zeros_like(snn_out)
    settle = torch.zeros(n, dtype=torch.int64)
    per_step = []  # (indices, [T_b, b, 2])
    seconds = 0.0
    for idx in sorted_batches(dev["attention_mask"].sum(1), batch_size):
        batch = {k: v[idx] for k, v in dev.items()}
        start = time.perf_counter()
        result = simulate(snn, batch, max_steps=max_steps)
        seconds += time.perf_counter() - start
        snn_out[idx], settle[idx] = result.output, result.settle_step
        qann_out[idx] = qann(**batch).logits
        per_step.append((idx, result.per_step))
    steps = max(p.shape[0] for _, p in per_step)
    curve = torch.empty(steps, n, 2, dtype=dtype)
    for idx, p in per_step:  # a settled sentence keeps its final logits at every later step
        curve[:p.shape[0], idx] = p
        curve[p.shape[0]:, idx] = p[-1]
    return snn_out, qann_out, settle, curve, seconds


@torch.no_grad()
def padding_check(snn, dev: dict, n: int) -> list[list[object]]:
    """The first ``n`` dev sentences in one batch padded to the longest, versus each one alone (no padding)."""
    batch = {k: v[:n] for k, v in dev.items()}
    together = simulate(snn, batch)
    alone = [simulate(snn, {k: v[i:i + 1] for k, v in batch.items()}) for i in range(n)]
    settle = torch.cat([r.settle_step for r in alone])
    output = torch.cat([r.output for r in alone])
    rel = (together.output - output).abs().amax(1) / output.abs().amax(1)
    return [[f"{n} sentences, padded to {int(batch['attention_mask'].sum(1).max())} tokens",
             f"{rel.max().item():.1e}", int((together.settle_step > settle).sum()),
             int((together.settle_step < settle).sum())]]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with GLUE SST-2 train.tsv and dev.tsv")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="local Hugging Face tokenizer directory (default: train one on the training split)")
    parser.add_argument("--models", nargs="+", default=["roberta_sst2_small", "bert_sst2_small"],
                        help="registry names of the Hugging Face models to train and convert")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--qat-lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-length", type=int, default=32, help="training sentences are cut to this many tokens")
    parser.add_argument("--eval-length", type=int, default=64, help="dev sentences are cut to this many tokens")
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training sentences")
    parser.add_argument("--max-steps", type=int, default=512, help="SNN time-step cap")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared, busy CPU more threads were 8x slower)")
    parser.add_argument("--retrain", action="store_true", help="ignore cached weights")
    return parser


def trained(args, name: str = "roberta_sst2_small") -> dict:
    """Tokenizer, the ANN ``name`` and its QANN (at ``args.levels``) trained per ``args`` or loaded from the cache,
    with the encoded data: a dict of ``ann``, ``qann``, ``dev``, ``dev_y``, ``ann_seconds``, ``qat_seconds``."""
    train_texts, train_y = load_sst2(args.data, "train")
    if args.max_train:
        train_texts, train_y = train_texts[:args.max_train], train_y[:args.max_train]
    dev_texts, dev_y = load_sst2(args.data, "dev")
    # the cache folder is keyed by what the tokenizer and the ANN depend on; the QANN file by the QAT settings
    qat_keys = ("qat_epochs", "qat_lr", "levels")
    settings = {k: v for k, v in vars(args).items()
                if k not in ("data", "max_steps", "threads", "retrain", "models") + qat_keys}
    settings["tokenizer"] = str(args.tokenizer)
    cache = ROOT / "runs" / "spikezip_sst2" / settings_key(settings)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "settings.json").write_text(json.dumps(settings, indent=1))
    qat_settings = {k: getattr(args, k) for k in qat_keys}

    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    elif (cache / "tokenizer" / "tokenizer.json").is_file() and not args.retrain:
        tokenizer = load_tokenizer(cache / "tokenizer")
    else:
        tokenizer = train_tokenizer(train_texts)
        tokenizer.save_pretrained(cache / "tokenizer")
    train_x = encode(tokenizer, train_texts, args.train_length)
    dev = encode(tokenizer, dev_texts, args.eval_length)
    print(f"SST-2: {len(train_y)} training sentences (cut to {args.train_length} tokens), {len(dev_y)} dev "
          f"sentences (median {int(dev['attention_mask'].sum(1).median())} tokens, cut to {args.eval_length}); "
          f"vocabulary {len(tokenizer)}")

    torch.manual_seed(0)
    ann = create(name, vocab_size=len(tokenizer), max_position_embeddings=args.eval_length + 2)
    ann_config = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=0.01, batch_size=args.batch_size,
                             warmup_epochs=0.5, progress=False)
    ann_seconds = train_or_load(ann, cache / f"{name}.safetensors", train_x, train_y, ann_config, "ANN", args.retrain)
    qann = to_qann(ann, args.levels, example_inputs={k: v[:4] for k, v in dev.items()})
    qat_config = TrainConfig(epochs=args.qat_epochs, lr=args.qat_lr, weight_decay=0.01,
                             batch_size=args.batch_size, warmup_epochs=0.1, seed=1, progress=False)
    qat_seconds = train_or_load(qann, cache / f"{name}-qann-{settings_key(qat_settings)}.safetensors", train_x,
                                train_y, qat_config, "QAT", args.retrain)
    return {"ann": ann, "qann": qann, "dev": dev, "dev_y": dev_y, "ann_seconds": ann_seconds,
            "qat_seconds": qat_seconds}


def in_dtype(qann, ann, levels: int, example: dict, dtype: torch.dtype):
    """The QANN traced again from the ANN in ``dtype`` (its constants in that dtype), with ``qann``'s weights."""
    twin = to_qann(copy.deepcopy(ann).to(dtype), levels, example_inputs=example)
    twin.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in qann.state_dict().items()})
    return twin.eval()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "train.tsv").is_file():
        print(f"SKIPPED: SST-2 not found at {args.data} (expected GLUE's train.tsv and dev.tsv); pass --data DIR")
        return
    for name in args.models:
        report(name, trained(args, name), args)


def report(name: str, models: dict, args) -> None:
    """Accuracy, SNN-QANN agreement (float64, float32, bfloat16), settle steps, padding and accuracy-vs-T tables."""
    ann, qann, dev, dev_y = models["ann"], models["qann"], models["dev"], models["dev_y"]
    ann_seconds, qat_seconds = models["ann_seconds"], models["qat_seconds"]
    example = {k: v[:4] for k, v in dev.items()}
    ann_acc = evaluate(ann, dev, dev_y)
    qann_acc = evaluate(qann, dev, dev_y)
    snn32_out, qann32_out, _, _, snn32_seconds = run_snn(qann.eval(), dev, args.batch_size, args.max_steps)
    padding = padding_check(to_snn(qann), dev, 64)
    bf16_out, qbf16_out, _, _, _ = run_snn(in_dtype(qann, ann, args.levels, example, torch.bfloat16), dev,
                                          args.batch_size, args.max_steps)
    qann = in_dtype(qann, ann, args.levels, example, torch.float64)  # the proof in float64
    snn_out, qann_out, settle, curve, snn_seconds = run_snn(qann, dev, args.batch_size, args.max_steps)

    snn_pred, qann_pred = snn_out.argmax(1), qann_out.argmax(1)
    rel = (snn_out - qann_out).abs().amax(1) / qann_out.abs().amax(1)
    settled = settle >= 0
    n = len(dev_y)
    print_table(f"{name}: SST-2 dev accuracy ({n} sentences), {args.levels} levels",
                ["model", "accuracy %", "seconds", "note"],
                [["ANN (float32)", 100 * ann_acc, ann_seconds, f"{type(ann).__name__}, ReLU; seconds: training"],
                 ["QANN (float32)", 100 * qann_acc, qat_seconds, f"QAT {args.qat_epochs} epoch(s) from the ANN"],
                 ["QANN (float64)", 100 * (qann_pred == dev_y).double().mean().item(), "", "reference for the SNN"],
                 ["SNN (float64)", 100 * (snn_pred == dev_y).double().mean().item(), snn_seconds,
                  "seconds: simulating the dev set"],
                 ["SNN (float32)", 100 * (snn32_out.argmax(1) == dev_y).double().mean().item(), snn32_seconds,
                  "seconds: simulating the dev set"]])
    print_table(f"{name}: SNN vs QANN, per dev sentence", ["check", "value"],
                [["float64: same prediction", f"{int((snn_pred == qann_pred).sum())} / {n}"],
                 ["float64: max relative logit difference", f"{rel.max().item():.2e}"],
                 ["float64: settled within max_steps", f"{int(settled.sum())} / {n}"],
                 ["float32: same prediction", f"{int((snn32_out.argmax(1) == qann32_out.argmax(1)).sum())} / {n}"],
                 ["float32: logits bit-identical", f"{int((snn32_out == qann32_out).all(1).sum())} / {n}"],
                 ["bfloat16: same prediction", f"{int((bf16_out.argmax(1) == qbf16_out.argmax(1)).sum())} / {n}"],
                 ["bfloat16: logits bit-identical", f"{int((bf16_out == qbf16_out).all(1).sum())} / {n}"]])
    s = settle[settled].double()
    print_table(f"{name}: settle steps (time steps until the SNN output is exact)", ["median", "p90", "max", "mean"],
                [[s.median().item(), s.quantile(0.9).item(), int(s.max()), s.mean().item()]])
    print_table(f"{name}: padding (float32 SNN): each sentence alone versus inside one padded batch",
                ["batch", "max rel. logit diff", "settles later padded", "settles earlier padded"], padding)
    marks = sorted({2 ** i for i in range(int(math.log2(curve.shape[0])) + 1)} | {curve.shape[0]})
    accuracy = (curve.argmax(-1) == dev_y).double().mean(-1)
    print_table(f"{name}: SNN dev accuracy if stopped after T steps (one run)", ["T", "accuracy %"],
                [[t, 100 * accuracy[t - 1].item()] for t in marks])

if __name__ == "__main__":
    main()
