"""evaluate_per_step: a test set simulated in batches scores exactly as one simulation of the whole set, and
sharded over 2 processes exactly as in one; simulate turns TF32 off for its run and restores the caller's flags."""

import os
import subprocess
import sys

import torch
from test_spikezip import CONFIGS, random_qann

from spiketwin.convert import to_qann, to_snn
from spiketwin.models import create
from spiketwin.simulate import evaluate_per_step, simulate


def test_batches_score_as_one_run():
    qann, x = random_qann(*CONFIGS[0], batch=11)
    snn = to_snn(qann)
    labels = torch.randint(0, 7, (11,), generator=torch.Generator().manual_seed(0))
    whole = simulate(snn, x)
    for batch_size in (4, 11):
        result = evaluate_per_step(snn, x, labels, batch_size=batch_size)
        assert torch.equal(result.accuracy, whole.accuracy_per_step(labels))
        assert torch.equal(result.settle_step, whole.settle_step)
        assert torch.equal(result.prediction, whole.output.argmax(-1))
    longer = evaluate_per_step(snn, x, labels, batch_size=4, steps=20).accuracy
    assert len(longer) == 20 and torch.equal(longer[len(whole.per_step):], longer[-1].expand(20 - len(whole.per_step)))


def _random_snn(seed: int = 0):
    """A float32 SNN of a random ReLU ViT (public API only) and 11 random images with labels."""
    torch.manual_seed(seed)
    model = create("vit_digits", num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    qann = to_qann(model, levels=8)
    qann(torch.rand(16, 1, 8, 8))  # calibrates the quantizer steps
    return to_snn(qann.eval()), torch.rand(11, 1, 8, 8), torch.randint(0, 5, (11,))


def _sharded_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    from gloo import gloo_group

    with gloo_group(rank, world, init_file):
        snn, x, y = _random_snn()
        result = evaluate_per_step(snn, x, y, batch_size=2, steps=40)
        torch.save(vars(result), f"{out_file}.{rank}")


def test_two_processes_give_exactly_the_single_process_result(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "eval.pt"
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    snn, x, y = _random_snn()
    single = evaluate_per_step(snn, x, y, batch_size=2, steps=40)
    settle = single.settle_step
    assert len(settle) == 11 and (settle > 0).all() and len(set(settle.tolist())) > 1  # batches of unequal lengths
    for rank in range(2):  # every process returns the whole result, in the original sample order
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for name, value in vars(single).items():
            assert torch.equal(got[name], value), (rank, name)


def test_tf32_is_off_during_a_simulation_and_the_callers_setting_comes_back():
    seen = []

    class Probe(torch.nn.Module):
        def simulate(self, x, max_steps=None, step_mode="m"):
            seen.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32))
            return x

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    try:
        simulate(Probe(), torch.zeros(1))
        simulate(Probe(), torch.zeros(1), allow_tf32=True)
        assert seen == [("highest", False), ("high", before[1])]
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 == before[1]
    finally:
        torch.set_float32_matmul_precision(before[0])


def test_tf32_policy_keeps_to_torchs_newer_flags_when_the_caller_used_them():
    code = """
import torch
from spiketwin.simulate import full_float32
m, c = torch.backends.cuda.matmul, torch.backends.cudnn.conv
m.fp32_precision = c.fp32_precision = "tf32"
with full_float32():
    inside = m.fp32_precision, c.fp32_precision
print(inside, (m.fp32_precision, c.fp32_precision))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('ieee', 'ieee') ('tf32', 'tf32')"
