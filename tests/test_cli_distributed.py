"""The command line on several processes and in mixed precision: ``spiketwin simulate`` under torchrun (2 CPU
processes, gloo) prints exactly what one process prints; ``train --amp bf16`` trains in bfloat16 autocast."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the CLI tests use the bundled digits (scikit-learn)")
pytest.importorskip("safetensors", reason="CLI checkpoints are safetensors")

from spiketwin.checkpoint import read_metadata  # noqa: E402
from spiketwin.cli import main  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
VIT = ["--model", "vit_digits", "--set", "embed_dim=16", "--set", "depth=1", "--set", "num_heads=2", "--limit", "60",
       "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_simulate_under_torchrun_prints_exactly_the_single_process_result(tmp_path, capsys):
    ann, qann = tmp_path / "ann.safetensors", tmp_path / "qann.safetensors"
    assert main(["train", *VIT, "--epochs", "1", "--out", str(ann)]) == 0
    assert main(["qat", "--checkpoint", str(ann), "--levels", "8", "--epochs", "1", "--limit", "60", "--quiet",
                 "--out", str(qann)]) == 0
    simulate = ["simulate", "--checkpoint", str(qann), "--limit", "30", "--batch-size", "4", "--max-steps", "32",
                "--quiet", "--threads", "1"]
    capsys.readouterr()
    assert main(simulate) == 0
    single = capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                           "-m", "spiketwin.cli", *simulate], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SNN accuracy at T: 1:" in single and "settle step: median" in single
    assert done.stdout == single  # rank 0 alone reports, with every process's share gathered


def test_train_amp_bf16_reaches_the_training_config(tmp_path, capsys):
    code = main(["train", *VIT, "--epochs", "1", "--amp", "bf16", "--run-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    meta = json.loads(read_metadata(tmp_path / "checkpoint.safetensors", "checkpoint")["spiketwin.train"])
    assert meta["config"]["amp"] == "bf16"
    assert main(["train", *VIT, "--amp", "fp8"]) == 2 and "--amp" in capsys.readouterr().err
