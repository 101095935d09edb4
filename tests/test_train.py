"""Training loop: resume continues exactly, one DDP step on 2 processes equals one step on the combined batch,
checkpoints are safetensors written atomically, mixup and the per-process shuffle behave as documented."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from spiketwin.base import TimeFold
from spiketwin.models import create
from spiketwin.neurons import LIF
from spiketwin.train import (CHECKPOINT, LOCK, METRICS, RunDirLocked, TrainConfig, collate, epoch_indices, evaluate,
                             fit, load_training_state, mixup, run_dir_lock, save_training_state)
from spiketwin.train.__main__ import main


class SpikingMLP(nn.Module):
    """Linear -> LIF over T steps -> mean rate -> Linear: a small spiking model without batch norm."""

    def __init__(self, T: int = 3) -> None:
        super().__init__()
        self.T = T
        self.fc1, self.lif, self.fc2 = TimeFold(nn.Linear(64, 32)), LIF(), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).unsqueeze(0).expand(self.T, -1, -1)
        return self.fc2(self.lif(self.fc1(x) * 3).mean(0))


def tiny_spikformer() -> nn.Module:
    return create("spikformer_cifar10", img_size=8, in_channels=1, dim=16, depth=1, num_heads=2, T=2)


def toy_data(n=96, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_continues_with_the_same_loss_curve(tmp_path, monkeypatch):
    x, y = toy_data()
    cfg = dict(epochs=3, lr=3e-3, batch_size=32, warmup_epochs=1, label_smoothing=0.1, mixup_alpha=0.5,
               mixup_off_epoch=2, progress=False)
    torch.manual_seed(0)
    whole = tiny_spikformer()
    ref = fit(whole, x, y, TrainConfig(**cfg, out_dir=str(tmp_path / "whole")))

    import spiketwin.train as train
    real_save = train.save_training_state

    def save_then_die(*args, **kwargs):  # the process is killed right after the first checkpoint
        real_save(*args, **kwargs)
        raise Crash

    torch.manual_seed(0)
    monkeypatch.setattr(train, "save_training_state", save_then_die)
    with pytest.raises(Crash):
        fit(tiny_spikformer(), x, y, TrainConfig(**cfg, out_dir=str(tmp_path / "run")))
    monkeypatch.setattr(train, "save_training_state", real_save)
    torch.manual_seed(123)  # a fresh process: different initial weights and RNG, all restored from the file
    resumed = tiny_spikformer()
    history = fit(resumed, x, y, TrainConfig(**cfg, out_dir=str(tmp_path / "run"), resume=True))

    assert [r["loss"] for r in history] == [r["loss"] for r in ref]
    assert [r["lr"] for r in history] == [r["lr"] for r in ref]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    logged = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3] and logged[-1]["loss"] == ref[-1]["loss"]
    assert len({r["loss"] for r in ref}) == 3  # the curve moves: the comparison is not trivially equal


def test_checkpoint_is_safetensors_atomic_and_checked(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    model = SpikingMLP()
    x, y = toy_data(32)
    fit(model, x, y, TrainConfig(epochs=1, batch_size=16, progress=False, out_dir=str(tmp_path)))
    path = tmp_path / CHECKPOINT
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT, LOCK, METRICS])  # no temporary left
    assert (tmp_path / LOCK).read_text() == ""  # the lock file stays (removing it would race), free and empty
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["spiketwin.train"])
    assert {"model.fc1.layer.weight", "optim.0.exp_avg", "optim.0.exp_avg_sq", "rng.torch"} <= keys
    assert meta["epoch"] == 1 and meta["config"]["batch_size"] == 16
    other = nn.Linear(3, 3)
    opt = torch.optim.AdamW(other.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(ValueError, match=f"{CHECKPOINT} does not fit Linear: missing keys .*: bias, weight"):
        load_training_state(path, other, opt, sched)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_training_state(tmp_path / "missing.safetensors", other, opt, sched)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors is not a safetensors file"):
        load_training_state(tmp_path / "junk.safetensors", other, opt, sched)


def test_checkpoint_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    torch.manual_seed(0)
    model = SpikingMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    x, y = toy_data(16)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
    save_training_state(tmp_path / "c.safetensors", model, opt, sched, 4, [{"epoch": 4}])
    expected_draw = torch.rand(3)
    torch.manual_seed(99)
    copy = SpikingMLP()
    opt2 = torch.optim.AdamW(copy.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** s)
    epoch, history = load_training_state(tmp_path / "c.safetensors", copy, opt2, sched2)
    assert epoch == 4 and history == [{"epoch": 4}]
    assert torch.equal(torch.rand(3), expected_draw)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == pytest.approx(0.005)
    for p, q in zip(model.parameters(), copy.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    from gloo import gloo_group

    with gloo_group(rank, world, init_file):
        torch.manual_seed(0)
        model = SpikingMLP().double()
        x, y = toy_data(16, dtype=torch.float64)
        fit(model, x, y, TrainConfig(epochs=1, batch_size=8, warmup_epochs=0, lr=0.05, progress=False))
        if rank == 0:
            torch.save(model.state_dict(), out_file)
        # a model with trainable parameters that never get a gradient (the official Spikformer's LayerNorms):
        # DDP must be told, or its second step fails ("Expected to have finished reduction ...")
        fit(tiny_spikformer(), torch.rand(16, 1, 8, 8), torch.arange(16) % 10,
            TrainConfig(epochs=1, batch_size=4, warmup_epochs=0, progress=False))


def test_one_ddp_step_on_two_processes_equals_one_step_on_the_combined_batch(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    torch.manual_seed(0)
    single = SpikingMLP().double()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    x, y = toy_data(16, dtype=torch.float64)
    fit(single, x, y, TrainConfig(epochs=1, batch_size=16, warmup_epochs=0, lr=0.05, progress=False))
    for name, value in single.state_dict().items():
        # AdamW's first step moves each weight by about lr * sign(grad) = 0.05; the two runs sum the gradient in
        # different orders (float64 round-off ~1e-17), which Adam's normalisation can amplify where a gradient
        # is itself ~1e-17, hence 1e-10 rather than 1e-15
        torch.testing.assert_close(ddp[name], value, rtol=1e-10, atol=1e-10)
        assert (value - before[name]).abs().max() > 1e-3  # the step changed every weight tensor


def test_epoch_indices_split_one_shuffle_between_processes():
    whole = epoch_indices(10, seed=3, epoch=2)
    parts = [epoch_indices(10, seed=3, epoch=2, rank=r, world_size=3) for r in range(3)]
    assert sorted(whole.tolist()) == list(range(10))
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to 12 by wrapping around
    assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist() + whole[:2].tolist())
    assert torch.equal(parts[1], torch.cat([whole, whole[:2]])[1::3])
    assert not torch.equal(epoch_indices(10, 3, 3), whole)  # a new order every epoch


def test_mixup_mixes_each_sample_with_its_mirror():
    x = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(mixup(x, 1.0), x)
    torch.testing.assert_close(mixup(x, 0.25), 0.25 * x + 0.75 * x.flip(0))


def test_python_m_spiketwin_train_is_the_cli_train_command(tmp_path, capsys):
    args = ["--model", "spikformer_cifar10", "--set", "dim=16", "depth=1", "num_heads=2", "T=2",
            "--data", "digits", "--batch-size", "128", "--run-dir", str(tmp_path), "--quiet"]
    assert main(args + ["--epochs", "1"]) == 0
    assert "train: 1 epochs" in capsys.readouterr().out
    run = json.loads((tmp_path / "run.json").read_text())
    # image size, channels and classes come from the data; --set takes several KEY=VALUE at once
    assert run["info"]["overrides"] == {"img_size": 8, "in_channels": 1, "num_classes": 10, "dim": 16, "depth": 1,
                                        "num_heads": 2, "T": 2}
    assert len((tmp_path / METRICS).read_text().splitlines()) == 1
    assert main(args + ["--set", "oops"]) == 2
    assert "--set expects KEY=VALUE, got 'oops'" in capsys.readouterr().err
    assert main(["--model", "spikformer_cifar10", "--data", "mnist"]) == 2
    assert "--data mnist needs --data-root DIR" in capsys.readouterr().err


def test_dataset_items_are_batched_time_first_and_mixed_along_the_batch(tmp_path):
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    frames = torch.rand(6, 3, 2, 4, 4)  # 6 samples of [T=3, C=2, 4, 4]
    x, y = collate([(frames[i], i) for i in (4, 1)])
    assert x.shape == (3, 2, 2, 4, 4) and torch.equal(x[:, 0], frames[4]) and y.tolist() == [4, 1]
    torch.testing.assert_close(mixup(x, 0.25, batch_dim=1), 0.25 * x + 0.75 * x.flip(1))
    images = TensorDataset(torch.rand(10, 1, 8, 8), torch.arange(10) % 10)
    torch.manual_seed(1)
    model = SpikingMLP()
    from_dataset = fit(model, images, None, TrainConfig(epochs=2, batch_size=4, progress=False, mixup_alpha=0.4),
                       eval_data=images)
    torch.manual_seed(1)
    from_tensors = fit(SpikingMLP(), *images.tensors,
                       TrainConfig(epochs=2, batch_size=4, progress=False, mixup_alpha=0.4),
                       eval_data=images.tensors)
    assert [r["loss"] for r in from_dataset] == [r["loss"] for r in from_tensors]
    assert from_dataset[-1]["accuracy"] == from_tensors[-1]["accuracy"] == evaluate(model, images)


def test_fit_keeps_the_simple_api_without_output_dir():
    torch.manual_seed(0)
    x, y = toy_data(64)
    history = fit(SpikingMLP(), x, y, TrainConfig(epochs=2, batch_size=32, progress=False), eval_data=(x, y))
    assert [r["epoch"] for r in history] == [1, 2] and {"loss", "lr", "seconds", "accuracy"} <= set(history[0])


HOLD_LOCK = """
import sys
from spiketwin.train import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the parent writes a line (or kills this process)
"""


def _lock_holder(directory) -> subprocess.Popen:
    """Another process that holds ``directory``'s lock once it has printed 'locked'."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_run_dir_lock_refuses_a_second_process_until_the_first_releases_or_dies(tmp_path):
    pytest.importorskip("fcntl", reason="run directories are locked with fcntl.flock (POSIX only)")
    run = tmp_path / "run"
    x, y = toy_data(32)
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, out_dir=str(run))
    child = _lock_holder(run)
    try:
        assert (run / LOCK).read_text().strip() == str(child.pid)
        with pytest.raises(RunDirLocked, match=rf"run directory {run.resolve()} is in use .*pid {child.pid}"):
            with run_dir_lock(run):
                pass
        with pytest.raises(RunDirLocked, match=f"pid {child.pid}"):  # fit takes the lock before touching files
            fit(SpikingMLP(), x, y, cfg)
        assert not (run / CHECKPOINT).exists() and not (run / METRICS).exists()
        child.communicate("release\n", timeout=60)  # released at the end of the child's with block
    finally:
        child.kill()
        child.wait()
    with run_dir_lock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())
        with run_dir_lock(run):  # nested in the process that holds it: allowed (the CLI locks around fit)
            pass
        assert fit(SpikingMLP(), x, y, cfg)[-1]["epoch"] == 1 and (run / CHECKPOINT).is_file()
    assert (run / LOCK).read_text() == ""  # released
    child = _lock_holder(run)  # a holder killed by SIGKILL leaves no stale lock: the kernel drops it
    child.kill()
    child.wait()
    with run_dir_lock(run):
        pass


def test_compiled_training_follows_the_eager_loss_curve_and_refuses_packing():
    """``compile=True`` trains through torch.compile (inductor, the LIF scan one operator in its graph): in float64
    the same losses and weights as eager training, to round-off (fused kernels may sum in another order)."""
    x, y = toy_data(20, dtype=torch.float64)  # a last batch of 4: compiled again
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = tiny_spikformer().double()
        history = fit(model, x, y, TrainConfig(epochs=2, batch_size=8, progress=False, pack_memory=False,
                                               compile=compiled))
        runs.append(([r["loss"] for r in history], torch.cat([p.detach().flatten() for p in model.parameters()])))
    (eager_loss, eager_w), (compiled_loss, compiled_w) = runs
    assert eager_loss == pytest.approx(compiled_loss, rel=1e-12, abs=0)
    # AdamW divides each gradient by its running scale: round-off in a near-zero gradient moves a weight by ~1e-11
    assert torch.allclose(eager_w, compiled_w, rtol=0, atol=1e-9) and not torch.equal(eager_w, eager_w * 0)
    with pytest.raises(ValueError, match="compile=True needs pack_memory=False"):
        fit(tiny_spikformer(), x, y, TrainConfig(epochs=1, progress=False, compile=True))
