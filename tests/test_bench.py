"""The benchmarks' shared round-robin timer: call order, warm-up and what it returns (never timings)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repository root

from bench.common import Timing, median_seconds, round_robin  # noqa: E402


def test_round_robin_calls_in_turns_after_untimed_warm_up_turns():
    calls = []
    timings = round_robin([lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")],
                          repeats=3, warmup=2)
    assert calls == ["a", "b", "c"] * 5
    assert len(timings) == 3 and all(isinstance(t, Timing) and t.seconds >= 0 and t.cpu_seconds >= 0
                                     for t in timings)


def test_median_seconds_is_one_function_timed_alone():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=4, warmup=1) >= 0
    assert len(calls) == 5


def test_bench_gpu_runs_its_quick_cpu_sizes_and_writes_every_figure(tmp_path, capsys):
    import json

    from bench import gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--quick", "--repeats", "1", "--json", str(out)])
    results = json.loads(out.read_text())
    assert [r["check"] for r in results["exactness"]][-1] == "Spikformer step cpu vs cpu"
    assert len(results["exactness"]) == 5 and all(r["ok"] and r["max_rel"] <= 1e-9 for r in results["exactness"])
    (vit,) = results["vit"]
    assert vit["settled"] and vit["agreement"] == 1.0 and vit["float64_max_rel"] <= 1e-9
    assert vit["float64_agreement"] == 1.0 and vit["snn64_images_s"] > 0
    assert vit["snn_images_s"] > 0 and vit["qann_images_s"] > 0
    assert (vit["chunk"], vit["other_chunk"]) == (1, 8) and vit["snn_other_chunk_images_s"] > 0
    assert vit["late_bit_identical"] and vit["snn_late_images_s"] > 0
    assert vit["unfused_bit_identical"] and vit["snn_unfused_images_s"] > 0
    assert vit["bf16_bit_identical"] and vit["snn16_images_s"] > 0 and vit["bf16_settle_median"] > 0
    (multi,) = vit["multi_spike"]
    assert multi["spikes_per_step"] == 4 and multi["bit_identical"] and multi["settle_max"] < vit["settle_max"]
    (more,) = vit["more_batches"]  # the throughput rows at the second batch size
    assert more["batch"] == 8 and more["qann_images_s"] > 0 and [e["spikes_per_step"] for e in more["snn"]] == [1, 4]
    assert all(e["bit_identical"] and e["images_s"] > 0 for e in more["snn"])
    assert [r["model"] for r in results["spikformer"]] == ["spikformer_cifar10", "spikformer_8_384"]
    assert all(r["samples_s"] > 0 and r["unfused_samples_s"] > 0 for r in results["spikformer"])
    assert results["env"]["quick"] and "bench.gpu on cpu" in capsys.readouterr().out
    # what only a CUDA run writes: the table must print it (the first GPU run is the first to read these keys)
    vit.update(host_syncs=3, host_syncs_late=2, peak_mb_chunk1=10.0, peak_mb_chunk8=20.0,
               device_work=dict(kernels=300 * vit["steps"], busy_s=0.5, wall_s=1.0))
    assert not any("compiled_samples_s" in r for r in results["spikformer"])  # --quick compiles only when told
    for r in results["spikformer"]:
        r.update(peak_mb=100.0, unfused_peak_mb=120.0, compiled_samples_s=2 * r["plain_samples_s"],
                 compiled_peak_mb=80.0, compiled_first_step_s=42.0)
    gpu.table(results)
    out = capsys.readouterr().out
    assert "torch.compile vs plain" in out and "first step (compiles) 42 s; peak 80 MB" in out
    assert "B8, 4 spike(s)/step, vs QANN" in out
    assert "3 host syncs in" in out and "GPU busy 50% of the wall time, 300 kernels a step" in out
    assert "peak 10 / 20 MB with 1 / 8" in out and "torch path peak 120 MB" in out
    vit["device_work"] = dict(kernels=0, busy_s=0.0, wall_s=1.0)
    gpu.table(results)
    assert "profiler saw no kernels" in capsys.readouterr().out


def test_bench_gpu_runs_the_next_part_after_one_raises(tmp_path, monkeypatch, capsys):
    import json

    from bench import gpu

    ran = []

    def boom(*args):
        raise RuntimeError("boom")
    monkeypatch.setattr(gpu, "vit_snn", boom)
    monkeypatch.setattr(gpu, "spikformer_training", lambda *args: ran.append(1) or [])
    out = tmp_path / "gpu.json"
    with pytest.raises(SystemExit, match="vit raised RuntimeError: boom"):
        gpu.main(["--device", "cpu", "--quick", "--parts", "vit", "spikformer", "--json", str(out)])
    results = json.loads(out.read_text())
    assert ran and "RuntimeError: boom" in results["errors"]["vit"] and results["vit"] == []
    assert "vit: FAILED" in capsys.readouterr().out
