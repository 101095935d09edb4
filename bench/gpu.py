"""One command for a GPU machine: exactness on the device, ViT-S SNN throughput, Spikformer training speed and memory.

    python -m bench.gpu [--device cuda] [--json out/bench_gpu.json]     # make bench-gpu; about 5 minutes on an H200
    python -m bench.gpu --device cpu --quick                             # tiny sizes: keeps the command working in CI

1. Exactness on the device, float64: random ViT, RoBERTa and iLIF CNN configurations converted by
   ``spiketwin.convert.to_qann / to_snn``: ``verify`` must report the SNN equal to the QANN per layer (1e-9); and one
   Spikformer training step (loss and every gradient) on the device equal to the same step on the CPU to float64
   round-off (1e-9 relative; with ``--device cpu`` the reference is the same step with the native kernels off).
2. ViT-S/16-224 SNN (random weights, quantizers calibrated on random images; 16 and 32 levels): images/s of
   ``spiketwin.simulate`` to the exact answer (every sample runs until it has settled) beside the QANN's forward, and
   beside SpikingJelly 2.0's SpikeZIP-TF recipe at its T = 64 (same ANN weights, its own QANN calibrated the same
   way; ``--sj-batch`` images per call, as its whole T-step sequence is one call) when ``spikingjelly`` imports.
   Float32 agreement of predictions with each side's own QANN; spiketwin's SNN also checked in float64 on 2 images,
   and timed in float64 and in bfloat16 (the bf16 QANN's exact twin, its matrix products on tensor cores).
   Beside the paper's neuron (one spike per step), neurons of ``--spikes-per-step`` spikes (default 4): the same
   exact answer (logits bit-identical to the QANN's, checked) in about a quarter of the steps. How often the host
   reads the settle flags: a check every step, every 8 steps, and every step read one check late (``read_late``).
   The fused kernels (Triton on CUDA, C on the CPU) against the torch path, here and in training. Every further
   ``--batch`` (default 256 after 64) gets the throughput rows alone: the host's work per step is the same for any
   batch, so a larger one leaves the GPU less waiting.
3. Spikformer training (``spikformer_cifar10`` B = 64 at 32 px, ``spikformer_8_384`` B = 16 at 224 px, T = 4): one
   AdamW step on random images: samples/s and peak device memory, beside SpikingJelly 2.0 (the official CIFAR model
   on its neurons, ``bench.spikformer``; its built-in Spikformer for 224 px) with its automatic (fastest available)
   neuron backend, when it imports. Each spiketwin model is trained as ``fit`` trains it (``spiketwin.memory.pack``)
   and plain (``pack_memory=False``): what the packing saves in memory and costs in time; and plain through
   ``torch.compile`` (``fit(..., TrainConfig(compile=True, pack_memory=False))``; its first step, which compiles, timed
   apart; on by default at full sizes, ``--compile`` with ``--quick``).

Only the public API is used (``spiketwin.convert``, ``spiketwin.simulate``, ``spiketwin.models.create``). TF32 stays
off everywhere (spiketwin's simulator turns it off; this script also keeps it off for every side's matrix products).
Prints one table; writes every figure as JSON (``--json``). A part that raises does not stop the others: its
traceback goes into the JSON (``errors``) and the table, and the exit status is non-zero. Timings: medians of
``--repeats`` runs taken in turns after a warm-up run, CUDA synchronised (``bench.common.round_robin``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from bench.common import print_table, round_robin
from spiketwin import native, simulate
from spiketwin.base import reset
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.snn import default_chunk
from spiketwin.kernels import triton_disabled
from spiketwin.memory import pack
from spiketwin.models import create
from spiketwin.simulate import full_float32

ROOT = Path(__file__).resolve().parents[1]
HAVE_SJ = importlib.util.find_spec("spikingjelly") is not None


def _unfused(device: torch.device):
    """The torch path instead of the fused kernels: the Triton kernels off on CUDA, the native C kernels on the CPU
    (as ``SPIKETWIN_TRITON=0`` / ``SPIKETWIN_NATIVE=0`` would)."""
    return triton_disabled() if device.type == "cuda" else native.disabled()


def _random_params(model: nn.Module, std: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def _calibrated(model: nn.Module, levels: int, x) -> nn.Module:
    qann = to_qann(model, levels=levels, example_inputs=x)
    qann.train()
    with torch.no_grad():
        qann(**x) if isinstance(x, dict) else qann(x)  # each quantizer's step is set by the first batch it sees
    return qann.eval()


# ---------------------------------------------------------------- 1. exactness on the device

def exactness(device: torch.device, quick: bool) -> list[dict]:
    f64 = dict(device=device, dtype=torch.float64)
    rows = []
    vits = [dict(depth=1, embed_dim=8, num_heads=1, img_size=8, patch_size=4, in_chans=1, levels=4, act="relu"),
            dict(depth=2, embed_dim=16, num_heads=2, img_size=8, patch_size=2, in_chans=1, levels=16, act="gelu"),
            dict(depth=3, embed_dim=24, num_heads=3, img_size=12, patch_size=4, in_chans=3, levels=32, act="relu")]
    for i, cfg in enumerate(vits[:2] if quick else vits):
        torch.manual_seed(i)
        levels, chans, img = cfg.pop("levels"), cfg["in_chans"], cfg["img_size"]
        model = _random_params(create("vit_digits", num_classes=7, mlp_ratio=2.0, **cfg), 0.4).to(**f64)
        qann = _calibrated(model, levels, torch.rand(8, chans, img, img, **f64))
        report = verify(qann, to_snn(qann), torch.rand(4, chans, img, img, **f64))
        rows.append(dict(check=f"ViT d{cfg['depth']} w{cfg['embed_dim']} L{levels}", ok=report.ok,
                         max_rel=report.max_rel))
    torch.manual_seed(10)
    roberta = _random_params(create("roberta_sst2_small", vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32), 0.4).to(**f64)
    ids = torch.randint(3, 50, (4, 9), device=device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    tokens = {"input_ids": ids, "attention_mask": mask}
    qann = _calibrated(roberta, 16, tokens)
    report = verify(qann, to_snn(qann), tokens)
    rows.append(dict(check="RoBERTa 2 layers w16 L16", ok=report.ok, max_rel=report.max_rel))
    torch.manual_seed(11)
    cnn = _random_params(create("vgg_small"), 0.3).to(**f64)
    images = torch.rand(16, 1, 8, 8, **f64)
    qann = to_qann(cnn, levels=2 ** 4, neuron="ilif", calibration=images)
    report = verify(qann, to_snn(qann), images[:4])
    rows.append(dict(check="iLIF VGG T=4", ok=report.ok, max_rel=report.max_rel))
    rows.append(spikformer_step_matches_cpu(device))
    return rows


def _one_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    reset(model)
    return [loss.detach()] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def spikformer_step_matches_cpu(device: torch.device) -> dict:
    """Loss and gradients of one float64 Spikformer step on ``device`` against the same step on the CPU."""
    torch.manual_seed(12)
    model = create("spikformer_cifar10", img_size=16, dim=32, depth=1, num_heads=2, T=2).double()
    x, y = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    reference_model = copy.deepcopy(model)
    got = _one_training_step(model.to(device), x.to(device), y.to(device))
    if device.type == "cpu":
        from spiketwin import native  # on the CPU the reference is the torch path (the native kernels off)

        with native.disabled():
            want = _one_training_step(reference_model, x, y)
    else:
        want = _one_training_step(reference_model, x, y)
    # each gradient's difference relative to the largest gradient entry: the gradients of biases that a BatchNorm
    # follows are zero in exact arithmetic, and their float64 round-off (~1e-18) differs between paths
    scale = max(float(w.abs().max()) for w in want[1:])
    rel = max([float((got[0].cpu() - want[0]).abs() / want[0].abs())]
              + [float((g.cpu() - w).abs().max()) / scale for g, w in zip(got[1:], want[1:])])
    return dict(check=f"Spikformer step {device.type} vs cpu", ok=rel <= 1e-9, max_rel=rel)


# ---------------------------------------------------------------- 2. ViT-S SNN throughput

def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).double().mean())


def vit_snn(device: torch.device, quick: bool, levels: list[int], batches: list[int], sj_batch: int,
            repeats: int, spikes_per_step: list[int]) -> list[dict]:
    sizes = dict(img_size=32, depth=2, embed_dim=48, num_heads=2) if quick else {}
    heads, img = sizes.get("num_heads", 6), sizes.get("img_size", 224)
    torch.manual_seed(20)
    ann = create("vit_small_patch16_224", **sizes).to(device).eval()
    calibration = torch.rand(min(batches[0], 32), 3, img, img, device=device)
    x = torch.rand(batches[0], 3, img, img, device=device)
    rows = []
    for L in levels:
        qann = _calibrated(ann, L, calibration)
        rows.append(_vit_level(qann, L, x, repeats, spikes_per_step))
        rows[-1]["more_batches"] = [_vit_throughput(qann, torch.rand(b, 3, img, img, device=device), repeats,
                                                    spikes_per_step) for b in batches[1:]]
        if HAVE_SJ:
            rows[-1].update(_sj_vit(ann, heads, L, calibration, x[:sj_batch], repeats))
    return rows


def _host_syncs(fn) -> int:
    """The device-to-host synchronisations that ``fn()`` makes, counted by CUDA's sync debug mode (warnings)."""
    import warnings

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def _device_work(fn) -> dict:
    """The work one call of ``fn`` gives the GPU, from ``torch.profiler``: its kernels and copies, their summed time
    and the call's wall time (both under the profiler, which slows the host a little). A GPU busy for a small share
    of the wall time waits for the host: what fewer launches or CUDA graphs would gain."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - began
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return dict(kernels=len(device), busy_s=sum(e.time_range.elapsed_us() for e in device) / 1e6, wall_s=wall)


def _forward(qann: nn.Module, x: torch.Tensor):
    """The QANN's forward on ``x`` as a call to time (no gradients, full float32)."""
    def qann_forward():
        with torch.no_grad(), full_float32():
            return qann(x)
    return qann_forward


def _vit_level(qann: nn.Module, L: int, x: torch.Tensor, repeats: int, spikes_per_step: list[int]) -> dict:
    snn = to_snn(qann)
    multi = {m: to_snn(qann, spikes_per_step=m) for m in spikes_per_step if m != 1}
    qann_forward = _forward(qann, x)
    expected = qann_forward()
    result = simulate(snn, x, max_steps=1024)
    settle = result.settle_step.double()
    row = dict(model="ViT-S/16", levels=L, batch=len(x), settled=bool((settle > 0).all()),
               settle_median=float(settle.median()), settle_max=int(settle.max()),
               agreement=_agreement(result.output, expected),
               max_rel_logits=float((result.output - expected).abs().max() / expected.abs().max()))
    row["steps"] = len(result.per_step)
    row["late_bit_identical"] = bool(torch.equal(simulate(snn, x, max_steps=1024, chunk=1, read_late=True).output,
                                                 expected))
    if x.is_cuda:  # the rule: at most one read per chunk of steps (docs/gpu.md)
        row["host_syncs"] = _host_syncs(lambda: simulate(snn, x, max_steps=1024))
        row["host_syncs_late"] = _host_syncs(lambda: simulate(snn, x, max_steps=1024, chunk=1, read_late=True))
        try:  # a diagnostic: its failure must not cost the figures
            row["device_work"] = _device_work(lambda: simulate(snn, x, max_steps=1024))
        except Exception as e:
            row["device_work"] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
        for chunk in (1, 8):  # a step records the values of more cuts when the start moves less often
            torch.cuda.reset_peak_memory_stats(x.device)
            simulate(snn, x, max_steps=1024, chunk=chunk)
            row[f"peak_mb_chunk{chunk}"] = torch.cuda.max_memory_allocated(x.device) / 2 ** 20
    # float64 beside float32 (both bit-identical to their QANN in the exact state): on GPUs with float64 matrix
    # units (H100/H200) a float64 simulation may cost little more than a float32 one without TF32: measured here
    q64, x64 = copy.deepcopy(qann).double(), x.double()
    snn64 = to_snn(q64)
    row["float64_max_rel"] = verify(q64, snn64, x64[:2]).max_rel
    with torch.no_grad():
        row["float64_agreement"] = _agreement(simulate(snn64, x64, max_steps=1024).output, q64(x64))
    # bfloat16 beside float32: the SNN is the bf16 QANN's exact twin (same bits), its matrix products on tensor cores
    # (whether a bf16 QANN is as good a model as its float32 one is a question for trained weights and real data:
    # bench.spikezip_mnist; on random weights and images the predictions are near-ties)
    q16, x16 = copy.deepcopy(qann).bfloat16(), x.bfloat16()
    snn16 = to_snn(q16)
    with torch.no_grad():
        expected16 = q16(x16)
    result16 = simulate(snn16, x16, max_steps=1024)
    row.update(bf16_bit_identical=bool(torch.equal(result16.output, expected16)),
               bf16_settle_median=float(result16.settle_step.double().median()))

    def whole_graph():  # every step runs the whole graph (no skipping of its settled head)
        with full_float32():
            return snn.simulate(x, max_steps=1024, skip_settled=False)
    # the settle check (one host read) at the default interval against the other of 1 and 8 steps (fewer reads, but
    # steps run past the last settle step until the check)
    row["chunk"] = default_chunk(x.device)
    row["other_chunk"] = 8 if row["chunk"] == 1 else 1

    def unfused():  # the same SNN on the torch path: what the fused kernels gain
        with _unfused(x.device):
            return simulate(snn, x, max_steps=1024)
    row["unfused_bit_identical"] = bool(torch.equal(unfused().output, expected))
    timings = round_robin([lambda: simulate(snn, x, max_steps=1024), qann_forward,
                           lambda: simulate(snn64, x64, max_steps=1024), whole_graph,
                           lambda: simulate(snn, x, max_steps=1024, chunk=row["other_chunk"]),
                           lambda: simulate(snn, x, max_steps=1024, chunk=1, read_late=True), unfused,
                           lambda: simulate(snn16, x16, max_steps=1024),
                           *(lambda snn_m=snn_m: simulate(snn_m, x, max_steps=1024) for snn_m in multi.values())],
                          repeats)
    (row["snn_images_s"], row["qann_images_s"], row["snn64_images_s"], row["snn_whole_images_s"],
     row["snn_other_chunk_images_s"], row["snn_late_images_s"], row["snn_unfused_images_s"], row["snn16_images_s"]) = (
        len(x) / t.seconds for t in timings[:8])
    row["multi_spike"] = []
    for (m, snn_m), t in zip(multi.items(), timings[8:]):  # the same exact answer in fewer steps
        result = simulate(snn_m, x, max_steps=1024)
        settle = result.settle_step.double()
        row["multi_spike"].append(dict(spikes_per_step=m, images_s=len(x) / t.seconds,
                                       settle_median=float(settle.median()), settle_max=int(settle.max()),
                                       bit_identical=bool(torch.equal(result.output, expected))))
    return row


def _vit_throughput(qann: nn.Module, x: torch.Tensor, repeats: int, spikes_per_step: list[int]) -> dict:
    """The throughput rows alone at another batch size: images/s of the SNN of each ``spikes_per_step`` beside the
    QANN's forward, with its settle steps and whether its logits are the QANN's, bit for bit."""
    qann_forward = _forward(qann, x)
    expected, row = qann_forward(), dict(batch=len(x), snn=[])
    snns = {m: to_snn(qann, spikes_per_step=m) for m in dict.fromkeys([1, *spikes_per_step])}
    for m, snn in snns.items():
        settle = simulate(snn, x, max_steps=1024)
        row["snn"].append(dict(spikes_per_step=m, settle_max=int(settle.settle_step.max()),
                               bit_identical=bool(torch.equal(settle.output, expected))))
    timings = round_robin([qann_forward, *(lambda snn=snn: simulate(snn, x, max_steps=1024) for snn in snns.values())],
                          repeats)
    row["qann_images_s"] = len(x) / timings[0].seconds
    for entry, t in zip(row["snn"], timings[1:]):
        entry["images_s"] = len(x) / t.seconds
    return row


def _sj_vit(ann: nn.Module, heads: int, L: int, calibration: torch.Tensor, x: torch.Tensor, repeats: int) -> dict:
    from bench.sj_sides import run_sj_snn, sj_spikezip_vit

    T = 64
    while True:
        try:
            with full_float32():
                qann, snn = sj_spikezip_vit(ann, heads, L, calibration, T)
                with torch.no_grad():
                    expected = qann(x)
                out = run_sj_snn(snn, x, T)
                seconds = round_robin([lambda snn=snn, x=x: run_sj_snn(snn, x, T)], repeats)[0].seconds
            return dict(sj_T=T, sj_batch=len(x), sj_images_s=len(x) / seconds,
                        sj_agreement=_agreement(out, expected),
                        sj_max_rel_logits=float((out - expected).abs().max() / expected.abs().max()))
        except torch.cuda.OutOfMemoryError:
            if len(x) == 1:
                return dict(sj_error="out of memory at batch 1")
            x = x[: len(x) // 2]
            torch.cuda.empty_cache()
        except Exception as e:  # a failure of the other library is a result to report, not a crash of the bench
            return dict(sj_error=f"{type(e).__name__}: {str(e)[:200]}")


# ---------------------------------------------------------------- 3. Spikformer training

def _train_steps(model: nn.Module, reset_fn, x: torch.Tensor, y: torch.Tensor, repeats: int,
                 compiled: bool = False) -> dict:
    """Samples/s of one AdamW step, and its peak device memory: the model, its gradients, the optimizer's state and
    what the step keeps for backward, above what the device held before (the earlier parts leave tensors there).
    ``compiled``: the steps call ``torch.compile(model)``; the first step (which compiles) is timed apart."""
    device = x.device
    if device.type == "cuda":
        gc.collect()
        on_device = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
                        if t.device == device)
        base = torch.cuda.memory_allocated(device) - on_device
    model.to(device).train()
    net = torch.compile(model, dynamic=False) if compiled else model  # as fit compiles
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reset_fn(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    result = {}
    with full_float32():
        if compiled:
            result["first_step_s"] = round_robin([step], 1, warmup=0)[0].seconds
        seconds = round_robin([step], repeats)[0].seconds
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if device.type == "cuda" else None
    return dict(samples_s=len(x) / seconds, peak_mb=peak, **result)


def _fresh(name: str, overrides: dict) -> nn.Module:
    """The model ``name`` with the same initial weights for every variant timed."""
    torch.manual_seed(30)
    return create(name, **overrides)


def _prefixed(prefix: str, figures: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in figures.items()}


def spikformer_training(device: torch.device, quick: bool, repeats: int, compiled: bool) -> list[dict]:
    configs = [("spikformer_cifar10", 64, 10, dict(img_size=32, T=4)),
               ("spikformer_8_384", 16, 1000, dict(img_size=224, T=4))]
    if quick:
        small = dict(dim=32, depth=1, num_heads=2, T=2)
        configs = [("spikformer_cifar10", 4, 10, dict(img_size=16, **small)),
                   ("spikformer_8_384", 2, 1000, dict(img_size=32, **small))]
    rows = []
    for name, batch, classes, overrides in configs:
        model = pack(_fresh(name, overrides))  # the memory savings fit() applies by default
        T, img = overrides["T"], overrides["img_size"]
        x, y = torch.rand(batch, 3, img, img, device=device), torch.randint(0, classes, (batch,), device=device)
        row = dict(model=name, batch=batch, T=T, img=img, **_train_steps(model, reset, x, y, repeats))
        with _unfused(device):  # after the fused steps, not in turn with them (each its own peak memory)
            row.update(_prefixed("unfused", _train_steps(model, reset, x, y, repeats)))
        del model
        # what pack costs and saves: the same steps with float saves, no recompute
        row.update(_prefixed("plain", _train_steps(_fresh(name, overrides), reset, x, y, repeats)))
        if compiled:
            try:  # report, do not crash: the eager figures stand without it
                row.update(_prefixed("compiled", _train_steps(_fresh(name, overrides), reset, x, y, repeats,
                                                              compiled=True)))
            except Exception as e:
                row["compiled_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        if HAVE_SJ:
            row.update(_sj_training(name, overrides, T, img, classes, x, y, repeats))
        rows.append(row)
    return rows


def _sj_training(name, overrides, T, img, classes, x, y, repeats) -> dict:
    from bench import sj_sides

    try:
        if name == "spikformer_cifar10" and "dim" not in overrides:
            from bench.spikformer import official_with_spikingjelly

            model, side = official_with_spikingjelly(T), "sj-official"
        else:
            dim, depth, heads = (overrides.get("dim", 384), overrides.get("depth", 8), overrides.get("num_heads", 12))
            model, side = sj_sides.sj_spikformer(T, img, dim, depth, heads, classes), "sj-builtin"
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        result = _train_steps(model, sj_sides.reset_net, x, y, repeats)
        return dict(sj_side=side, sj_samples_s=result["samples_s"], sj_peak_mb=result["peak_mb"])
    except Exception as e:  # report, do not crash
        return dict(sj_error=f"{type(e).__name__}: {str(e)[:200]}")


# ---------------------------------------------------------------- the table

def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _work(work: dict | None, steps: int) -> str:
    if not work:
        return ""
    if "error" in work:
        return f"; profiler: {work['error'][:40]}"
    if not work["kernels"]:  # CUPTI unavailable: the profiler records no device events, which is not an idle GPU
        return "; profiler saw no kernels"
    return (f"; GPU busy {100 * work['busy_s'] / work['wall_s']:.0f}% of the wall time, "
            f"{work['kernels'] / steps:.0f} kernels a step (profiled)")


def _peak(mb: float | None, label: str = "peak") -> str:
    """``label N MB``, or nothing where no peak was measured (the CPU)."""
    return f"{label} {mb:.0f} MB" if mb is not None else ""


def table(results: dict) -> None:
    rows = [[f"exact: {r['check']}", "OK" if r["ok"] else "FAILED", f"max rel {r['max_rel']:.1e}", "", ""]
            for r in results["exactness"]]
    for r in results["vit"]:
        what = f"{r['model']} L{r['levels']} B{r['batch']} images/s"
        detail = (f"settle med {r['settle_median']:g} max {r['settle_max']}; agree {100 * r['agreement']:.2f}%; "
                  f"f64 {r['float64_max_rel']:.0e}"
                  + (f"; {r['host_syncs']} host syncs in {r['steps']} steps" if "host_syncs" in r else "")
                  + _work(r.get("device_work"), r["steps"]))
        rows.append([what + " vs QANN", f"{r['snn_images_s']:.1f}", f"{r['qann_images_s']:.1f}",
                     _ratio(r["snn_images_s"], r["qann_images_s"]), detail])
        rows.append(["  settled head skipped vs whole graph", f"{r['snn_images_s']:.1f}",
                     f"{r['snn_whole_images_s']:.1f}", _ratio(r["snn_images_s"], r["snn_whole_images_s"]),
                     "the same bits (skip_settled)"])
        rows.append(["  float64 SNN images/s vs float32", f"{r['snn64_images_s']:.1f}", f"{r['snn_images_s']:.1f}",
                     _ratio(r["snn64_images_s"], r["snn_images_s"]),
                     f"float64 agree {100 * r['float64_agreement']:.2f}% with the float64 QANN"])
        rows.append(["  bfloat16 SNN images/s vs float32", f"{r['snn16_images_s']:.1f}", f"{r['snn_images_s']:.1f}",
                     _ratio(r["snn16_images_s"], r["snn_images_s"]),
                     f"logits = bf16 QANN's: {'yes' if r['bf16_bit_identical'] else 'NO'}; settle med "
                     f"{r['bf16_settle_median']:g}"])
        rows.append([f"  settle check every {r['chunk']} step(s) vs {r['other_chunk']}", f"{r['snn_images_s']:.1f}",
                     f"{r['snn_other_chunk_images_s']:.1f}", _ratio(r["snn_images_s"], r["snn_other_chunk_images_s"]),
                     "simulate(..., chunk=N): one host read per chunk"
                     + (f"; peak {r['peak_mb_chunk1']:.0f} / {r['peak_mb_chunk8']:.0f} MB with 1 / 8"
                        if "peak_mb_chunk1" in r else "")])
        rows.append([f"  check every step, read late, vs every {r['chunk']}", f"{r['snn_late_images_s']:.1f}",
                     f"{r['snn_images_s']:.1f}", _ratio(r["snn_late_images_s"], r["snn_images_s"]),
                     "chunk=1, read_late=True: decides from the last check's flags; logits = QANN's: "
                     + ("yes" if r["late_bit_identical"] else "NO")
                     + (f"; {r['host_syncs_late']} host syncs" if "host_syncs_late" in r else "")])
        rows.append(["  fused kernels vs torch path", f"{r['snn_images_s']:.1f}", f"{r['snn_unfused_images_s']:.1f}",
                     _ratio(r["snn_images_s"], r["snn_unfused_images_s"]),
                     "Triton on CUDA, C on the CPU; torch path's logits = QANN's: "
                     + ("yes" if r["unfused_bit_identical"] else "NO")])
        for multi in r.get("multi_spike", []):
            rows.append([f"  {multi['spikes_per_step']} spikes/step vs 1", f"{multi['images_s']:.1f}",
                         f"{r['snn_images_s']:.1f}", _ratio(multi["images_s"], r["snn_images_s"]),
                         f"settle med {multi['settle_median']:g} max {multi['settle_max']}; logits = QANN's: "
                         + ("yes" if multi["bit_identical"] else "NO")])
        for more in r.get("more_batches", []):
            for entry in more["snn"]:
                rows.append([f"  B{more['batch']}, {entry['spikes_per_step']} spike(s)/step, vs QANN",
                             f"{entry['images_s']:.1f}", f"{more['qann_images_s']:.1f}",
                             _ratio(entry["images_s"], more["qann_images_s"]),
                             f"settle max {entry['settle_max']}; logits = QANN's: "
                             + ("yes" if entry["bit_identical"] else "NO")])
        if "sj_images_s" in r:
            rows.append([f"  vs SpikingJelly T={r['sj_T']} B{r['sj_batch']}", f"{r['snn_images_s']:.1f}",
                         f"{r['sj_images_s']:.1f}", _ratio(r["snn_images_s"], r["sj_images_s"]),
                         f"SJ agree {100 * r['sj_agreement']:.2f}% with its QANN"])
        elif "sj_error" in r:
            rows.append(["  vs SpikingJelly", "", "error", "", r["sj_error"][:60]])
    for r in results["spikformer"]:
        mem, sj_mem = _peak(r["peak_mb"]), _peak(r.get("sj_peak_mb"), "; SJ peak")
        rows.append([f"{r['model']} B{r['batch']} {r['img']}px T{r['T']} train samples/s", f"{r['samples_s']:.1f}",
                     "", "", mem])
        unfused_mem = _peak(r["unfused_peak_mb"], "; torch path peak")
        rows.append(["  fused kernels vs torch path", f"{r['samples_s']:.1f}", f"{r['unfused_samples_s']:.1f}",
                     _ratio(r["samples_s"], r["unfused_samples_s"]), "run one after the other" + unfused_mem])
        plain_mem = _peak(r["plain_peak_mb"])
        rows.append(["  memory.pack vs plain model", f"{r['samples_s']:.1f}", f"{r['plain_samples_s']:.1f}",
                     _ratio(r["samples_s"], r["plain_samples_s"]), f"plain (pack_memory=False) {plain_mem}"])
        if "sj_samples_s" in r:
            rows.append([f"  vs {r['sj_side']}", f"{r['samples_s']:.1f}", f"{r['sj_samples_s']:.1f}",
                         _ratio(r["samples_s"], r["sj_samples_s"]), mem + sj_mem])
            rows.append([f"  plain vs {r['sj_side']}", f"{r['plain_samples_s']:.1f}", f"{r['sj_samples_s']:.1f}",
                         _ratio(r["plain_samples_s"], r["sj_samples_s"]), plain_mem + sj_mem])
        elif "sj_error" in r:
            rows.append(["  vs SpikingJelly", "", "error", "", r["sj_error"][:60]])
        if "compiled_samples_s" in r:
            compiled_mem = _peak(r["compiled_peak_mb"])
            rows.append(["  torch.compile vs plain", f"{r['compiled_samples_s']:.1f}", f"{r['plain_samples_s']:.1f}",
                         _ratio(r["compiled_samples_s"], r["plain_samples_s"]),
                         f"first step (compiles) {r['compiled_first_step_s']:.0f} s; {compiled_mem}"])
            if "sj_samples_s" in r:
                rows.append([f"  compiled vs {r['sj_side']}", f"{r['compiled_samples_s']:.1f}",
                             f"{r['sj_samples_s']:.1f}", _ratio(r["compiled_samples_s"], r["sj_samples_s"]),
                             compiled_mem + sj_mem])
        elif "compiled_error" in r:
            rows.append(["  torch.compile", "", "error", "", r["compiled_error"][:60]])
    for part, text in results["errors"].items():
        rows.append([f"{part}: FAILED", "", "", "", text.strip().splitlines()[-1][:60]])
    env = results["env"]
    print_table(f"bench.gpu on {env['device_name']} (torch {env['torch']}; SpikingJelly "
                f"{'present' if HAVE_SJ else 'absent'}; {env['seconds']:.0f} s)",
                ["item", "spiketwin", "beside", "ratio", "detail"], rows)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto",
                   help="cuda, cpu or auto (default: cuda when available, else cpu with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the CPU and CI)")
    p.add_argument("--levels", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256],
                   help="ViT-S images per simulate call: every row at the first, the throughput rows at the others")
    p.add_argument("--spikes-per-step", type=int, nargs="+", default=[1, 4],
                   help="ViT-S neurons of m spikes per step (1, the paper's, is always timed; any other m adds a row: "
                        "the same exact answer in fewer steps)")
    p.add_argument("--sj-batch", type=int, default=16, help="ViT-S images per SpikingJelly call (T = 64 in one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time Spikformer training through torch.compile too (default: yes, except with --quick)")
    p.add_argument("--parts", nargs="+", default=["exact", "vit", "spikformer"],
                   choices=["exact", "vit", "spikformer"])
    p.add_argument("--json", default=str(ROOT / "out" / "bench_gpu.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench.gpu: --device cuda but torch sees no CUDA device; use --device cpu --quick")
    quick = args.quick or (args.device == "auto" and device.type == "cpu")
    if quick and not args.quick:
        print("bench.gpu: no CUDA device: running the quick CPU sizes (--device cpu --quick); "
              "--device cpu alone runs the full sizes")
    batches, sj_batch = ([4, 8], 2) if quick else (args.batch, args.sj_batch)
    compiled = not quick if args.compile is None else args.compile
    began = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    results = dict(env=dict(device=str(device), device_name=name, torch=torch.__version__, quick=quick,
                            spikingjelly=HAVE_SJ, seconds=0.0, argv=list(argv)), exactness=[], vit=[], spikformer=[],
                   errors={})
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = {"exact": ("exactness", lambda: exactness(device, quick)),
             "vit": ("vit", lambda: vit_snn(device, quick, args.levels[:1] if quick else args.levels, batches, sj_batch,
                                            args.repeats, args.spikes_per_step)),
             "spikformer": ("spikformer", lambda: spikformer_training(device, quick, args.repeats, compiled))}
    for part in [p for p in parts if p in args.parts]:
        key, run = parts[part]
        try:
            results[key] = run()
        except Exception:  # the next part still runs: on a lent GPU every minute counts
            results["errors"][part] = traceback.format_exc(limit=-6)
            print(f"bench.gpu: {part} FAILED:\n{results['errors'][part]}", file=sys.stderr, flush=True)
        results["env"]["seconds"] = time.perf_counter() - began
        out.write_text(json.dumps(results, indent=1) + "\n")  # after every part: a run cut short keeps what it did
        print(f"bench.gpu: {part} done at {results['env']['seconds']:.0f} s", flush=True)
    table(results)
    print(f"bench.gpu: wrote {out}")
    failed = [r["check"] for r in results["exactness"] if not r["ok"]]
    if failed or results["errors"]:
        sys.exit(f"bench.gpu on {device}: " + "; ".join(
            ([f"exactness FAILED: {', '.join(failed)}"] if failed else [])
            + [f"{part} raised {text.strip().splitlines()[-1]}" for part, text in results["errors"].items()]))


if __name__ == "__main__":
    main(sys.argv[1:])
