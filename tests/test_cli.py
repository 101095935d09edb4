"""The command line: every subcommand runs on the bundled digits at small sizes; mistakes give one-line
errors and the documented exit codes (0 ok, 2 usage, 1 failure)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the CLI tests use the bundled digits (scikit-learn)")
pytest.importorskip("safetensors", reason="CLI checkpoints are safetensors")

from spiketwin.cli import COMMANDS, main  # noqa: E402

SMALL = ["--model", "scnn", "--set", "channels=(4,)", "--set", "T=2", "--limit", "120", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: spiketwin {command}")


def test_train_energy_export_journey(tmp_path, capsys):
    ckpt, nir_file = tmp_path / "ann.safetensors", tmp_path / "scnn.nir"
    config = tmp_path / "run.toml"
    config.write_text('batch-size = 32\nsamples = 16\n[train]\nepochs = 1\nlr = 0.01\nset = { T = 2 }\n')
    code, out, err = run(capsys, "train", *SMALL[:2], "--set", "channels=(4,)", "--limit", "120", "--quiet",
                         "--config", str(config), "--out", str(ckpt))
    assert code == 0, err
    assert "1 epochs" in out and ckpt.stat().st_size > 0

    code, out, err = run(capsys, "energy", "--checkpoint", str(ckpt), "--config", str(config),
                         "--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"), "--quiet",
                         "--raster", str(tmp_path / "raster.png"), "--raster-neurons", "0,1,2")
    assert code == 0, err
    assert "ANN/SNN" in out and "step_network.0.layer.0" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["batch"] == 16 and data["T"] == 2 and data["layers"][0]["coding"] == "analog"
    assert (tmp_path / "e.csv").read_text().startswith("convention,name,kind,coding")
    assert data["convention"] == "spiketwin" and "convention spiketwin" in out
    assert (tmp_path / "raster.png").stat().st_size > 1000

    code, out, err = run(capsys, "energy", "--checkpoint", str(ckpt), "--config", str(config), "--quiet",
                         "--convention", "syops,spiketwin", "--json", str(tmp_path / "c.json"),
                         "--csv", str(tmp_path / "c.csv"))
    assert code == 0, err
    assert "convention syops" in out and "the same run under 2 conventions" in out
    both = json.loads((tmp_path / "c.json").read_text())["conventions"]
    assert list(both) == ["syops", "spiketwin"] and both["spiketwin"]["totals"] == data["totals"]
    assert {row.split(",")[0] for row in (tmp_path / "c.csv").read_text().splitlines()[1:]} == {"syops", "spiketwin"}

    code, out, err = run(capsys, "export-nir", "--checkpoint", str(ckpt), "--out", str(nir_file), "--quiet")
    assert code == 0, err
    assert "sub-module step_network" in out and nir_file.stat().st_size > 0
    assert "max |output difference| = 0" in out
    for target in ("snntorch", "norse"):  # read back by our reader and, where installed, by the library itself
        code, out, err = run(capsys, "export-nir", "--checkpoint", str(ckpt), "--out", str(nir_file), "--quiet",
                             "--target", target)
        assert code == 0, err
        installed = __import__("importlib").util.find_spec(target) is not None
        assert f"for {target})" in out and "read back with nirtorch" in out
        assert (f"read back with {target} and run on 8 test samples: max |output difference| = 0\n" in out
                if installed else f"not read back with {target}" in out), out


def test_yaml_config(tmp_path, capsys):
    pytest.importorskip("yaml", reason="YAML configs need PyYAML")
    config = tmp_path / "run.yaml"
    config.write_text("samples: 4\nenergy:\n  preset: int8\n  set:\n    T: 2\n    channels: [4]\n")
    code, out, err = run(capsys, "energy", "--model", "scnn", "--config", str(config), "--quiet")
    assert code == 0, err
    assert "T=2, E_MAC=0.23 pJ, E_AC=0.03 pJ" in out
    config.write_text("energy: [1, 2]\n")
    assert run(capsys, "energy", "--model", "scnn", "--config", str(config))[0] == 2


def test_export_refusal_is_a_failure(tmp_path, capsys):
    code, _, err = run(capsys, "export-nir", *SMALL, "--submodule", "", "--out", str(tmp_path / "x.nir"))
    assert code == 1 and "cannot be traced" in err and not (tmp_path / "x.nir").exists()


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    bad_config, bad_section = tmp_path / "bad.toml", tmp_path / "bad_section.toml"
    bad_config.write_text("epochz = 3\n")
    bad_section.write_text("[energy]\nepochs = 3\n")  # a train option in the energy table
    for argv in (["train", "--epochz", "3"], ["frobnicate"], ["energy", "--limit"],
                 ["train", "--config", str(bad_config), "--model", "scnn"],
                 ["train", "--config", str(bad_section), "--model", "scnn"],
                 ["train", "--config", str(tmp_path / "missing.toml")],
                 ["export-nir", "--model", "scnn"], ["train", "--set", "T"], ["bench", "nope"]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "error" in err, (argv, err)


def test_failures_exit_1_with_one_line(tmp_path, capsys):
    not_a_checkpoint = tmp_path / "junk.safetensors"
    not_a_checkpoint.write_bytes(b"not safetensors")
    for argv, needle in ((["energy", "--checkpoint", str(tmp_path / "none.safetensors")], "not found"),
                         (["energy", "--checkpoint", str(not_a_checkpoint)], "not a safetensors file"),
                         (["energy", "--model", "no_such_model"], "unknown model"),
                         (["energy", "--model", "vgg_small", "--samples", "2"], "vgg_small (ann) is not spiking"),
                         (["energy", "--model", "scnn", "--convention", "syops,loihi"], "unknown ['loihi']"),
                         (["train", "--data", "mnist", "--data-root", str(tmp_path), "--model", "scnn"], "MNIST")):
        code, _, err = run(capsys, *argv)
        assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_bench_lists_and_runs(capsys):
    code, out, _ = run(capsys, "bench")
    assert code == 0 and "lif" in out


def test_bench_runs_the_benchmark_as_a_child_process_and_returns_its_exit_code(capfd):
    assert main(["bench", "lif", "--", "--help"]) == 0
    assert "usage:" in capfd.readouterr().out  # the benchmark's own help, printed by the child
    assert main(["bench", "lif", "--", "--no-such-flag"]) == 2  # argparse's exit code in the benchmark


@pytest.mark.slow
def test_demo_runs(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--", "--epochs", "1", "--qat-epochs", "1", "--energy-samples", "4",
                         "--energy-steps", "8", "--out", str(tmp_path))
    assert code == 0, err
    assert "float64 equivalence: OK" in out
    # the energy table of spiketwin energy, and the library's accuracy-vs-T plot
    assert re.search(r"blocks\.0\.attn\.matmul_qk +product", out) and "per sample, T=8, E_MAC=4.6 pJ" in out
    assert "ANN/SNN = " in out and (tmp_path / "spikezip_digits_accuracy_vs_T.png").stat().st_size > 1000


VIT = ["--model", "vit_digits", "--set", "embed_dim=16", "--set", "depth=1", "--set", "num_heads=2", "--limit", "60",
       "--quiet"]


@pytest.mark.slow
def test_spikezip_journey(tmp_path, capsys):
    ann, qann, snn = (tmp_path / f"{n}.safetensors" for n in ("ann", "qann", "snn"))
    steps = [
        ["train", *VIT, "--epochs", "1", "--out", str(ann)],
        ["qat", "--checkpoint", str(ann), "--levels", "8", "--epochs", "1", "--limit", "60", "--quiet",
         "--out", str(qann)],
        ["convert", "--checkpoint", str(qann), "--batch-size", "4", "--limit", "60", "--out", str(snn)],
        ["simulate", "--checkpoint", str(snn), "--limit", "20", "--quiet", "--max-steps", "16",
         "--plot", str(tmp_path / "acc.png"), "--settle-plot", str(tmp_path / "settle.png"),
         "--raster", str(tmp_path / "raster.png")],
        ["verify", "--checkpoint", str(snn), "--limit", "20", "--batch-size", "2"],
        ["energy", "--checkpoint", str(snn), "--samples", "4", "--max-steps", "16"],
        # 8 levels, up to 8 spikes per step: every neuron reaches its level in one step, the SNN in one step
        ["simulate", "--checkpoint", str(snn), "--limit", "20", "--quiet", "--max-steps", "16",
         "--spikes-per-step", "8"],
        ["verify", "--checkpoint", str(snn), "--limit", "20", "--batch-size", "2", "--spikes-per-step", "3"],
    ]
    outputs = []
    for argv in steps:
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        outputs.append(out)
    assert "OK: max relative difference" in outputs[2] and "OK: max relative difference" in outputs[4]
    assert "SNN accuracy at T: 1:" in outputs[3] and "settle step: median" in outputs[3]
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("acc.png", "settle.png", "raster.png"))
    assert re.search(r"blocks\.0\.attn\.matmul_qk +product", outputs[5]) and "patch_embed.proj" in outputs[5]
    assert "settle step: median 1, max 1;" in outputs[6] and "OK: max relative difference" in outputs[7]
    code, _, err = run(capsys, "export-nir", "--checkpoint", str(snn), "--out", str(tmp_path / "v.nir"))
    assert code == 1 and "model.quantizers.0: ExactSTBIF: ST-BIF neuron" in err  # refused, each module named
    code, _, err = run(capsys, "qat", "--checkpoint", str(qann), "--limit", "60")  # a QANN is not an ANN
    assert code == 1 and "holds a qann model" in err


def test_entry_point_exit_code():
    done = subprocess.run([sys.executable, "-m", "spiketwin.cli", "energy", "--bogus"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    done = subprocess.run([sys.executable, "-m", "spiketwin", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: spiketwin") and "export-nir" in done.stdout


@pytest.mark.slow
def test_spikeconverter_journey(tmp_path, capsys):
    ann, qann, snn = (tmp_path / f"{n}.safetensors" for n in ("ann", "qann", "snn"))
    small = ["--limit", "60", "--quiet"]
    steps = [["train", "--model", "vgg_small", "--set", "channels=(4, 8)", "--set", "hidden=16", "--epochs", "1",
              *small, "--out", str(ann)],
             ["qat", "--checkpoint", str(ann), "--neuron", "ilif", "--levels", "8", "--epochs", "1", *small,
              "--out", str(qann)],  # the iLIF QANN is rebuilt from the file without calibration data
             ["convert", "--checkpoint", str(qann), "--batch-size", "4", *small, "--out", str(snn)],
             ["simulate", "--checkpoint", str(snn), *small],
             ["energy", "--checkpoint", str(snn), "--samples", "4"]]
    outputs = []
    for argv in steps:
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        outputs.append(out)
    assert "OK: max relative difference" in outputs[2] and "settle step: median" in outputs[3]
    assert "analog" in outputs[4] and "ANN/SNN" in outputs[4]


MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason=f"MNIST copy not found in {MNIST}")
def test_real_mnist_files(tmp_path, capsys):
    code, out, err = run(capsys, "energy", "--model", "scnn", "--set", "img_size=28", "--set", "channels=(4, 8)",
                         "--data", "mnist", "--data-root", str(MNIST), "--samples", "8", "--quiet")
    assert code == 0, err
    assert "step_network.0.layer.0" in out and "per sample, T=4" in out


TRAIN = ["train", "--model", "scnn", "--set", "channels=(4,)", "T=2", "--limit", "96", "--batch-size", "32",
         "--epochs", "3", "--lr", "0.01", "--warmup-epochs", "0.5", "--label-smoothing", "0.1", "--mixup", "0.4",
         "--mixup-off-epoch", "2", "--quiet"]


def test_train_resume_after_a_crash_continues_the_same_loss_curve(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    import spiketwin.train as train

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    code, _, err = run(capsys, *TRAIN, "--run-dir", str(whole), "--out", str(tmp_path / "whole.safetensors"))
    assert code == 0, err
    real_save = train.save_training_state

    def save_then_die(*args, **kwargs):  # killed right after the first epoch's checkpoint
        real_save(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(train, "save_training_state", save_then_die)
    code, _, err = run(capsys, *TRAIN, "--run-dir", str(broken))
    assert code == 1 and "killed" in err
    monkeypatch.setattr(train, "save_training_state", real_save)
    code, out, err = run(capsys, *TRAIN, "--run-dir", str(broken), "--resume",
                         "--out", str(tmp_path / "resumed.safetensors"))
    assert code == 0, err
    curve = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == [1, 2, 3] and len({r["loss"] for r in curve}) == 3
    assert [(r["loss"], r["lr"]) for r in resumed] == [(r["loss"], r["lr"]) for r in curve]
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run_info = json.loads((broken / "run.json").read_text())
    assert run_info["args"]["mixup"] == 0.4 and run_info["info"]["overrides"]["num_classes"] == 10


def test_train_reads_the_library_datasets(tmp_path, capsys, monkeypatch):
    from test_data_cifar import make_cifar10
    from test_data_events import make_cifar10_dvs, make_gesture

    monkeypatch.setenv("SPIKETWIN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    make_cifar10(tmp_path / "c10")
    make_gesture(tmp_path / "gesture", rng)
    make_cifar10_dvs(tmp_path / "c10dvs", rng, per_class=11)  # 10 train, 1 test per class (split 0.9)
    common = ["--model", "scnn", "--set", "channels=(2,)", "--epochs", "1", "--batch-size", "4", "--quiet"]
    for data, root, extra, needle in (
            ("cifar10", "c10", ["--limit", "8"], "(3 samples)"),
            ("dvs_gesture", "gesture", ["--frames", "2", "--mixup", "0.5"], "(1 samples)"),
            ("cifar10_dvs", "c10dvs", ["--frames", "3", "--workers", "1"], "(10 samples)")):
        code, out, err = run(capsys, "train", *common, "--data", data, "--data-root", str(tmp_path / root), *extra,
                             "--out", str(tmp_path / f"{data}.safetensors"))
        assert code == 0, (data, err)
        assert "train: 1 epochs" in out and needle in out, (data, out)
    info = json.loads(__import__("safetensors").safe_open(str(tmp_path / "dvs_gesture.safetensors"), "pt")
                      .metadata()["spiketwin"])
    assert info["overrides"] == {"channels": [2], "img_size": 128, "in_channels": 2, "num_classes": 11}
    image = pytest.importorskip("PIL.Image")
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    code, out, err = run(capsys, "train", *common, "--data", "imagefolder", "--data-root", str(tmp_path / "imgs"),
                         "--image-size", "8")
    assert code == 0 and "(4 samples)" in out, err


def test_train_flag_and_data_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()
    for argv, exit_code, needle in (
            (["train", "--model", "scnn", "--resume"], 2, "--resume needs --run-dir"),
            (["train", "--model", "scnn", "--mixup", "-1"], 2, "--mixup must be >= 0"),
            (["train", "--model", "scnn", "--label-smoothing", "1.5"], 2, "--label-smoothing must be < 1"),
            (["train", "--model", "scnn", "--frames", "0"], 2, "--frames must be >= 1"),
            (["train", "--model", "scnn", "--data", "imagenet"], 2, "invalid choice: 'imagenet'"),
            (["train", "--model", "scnn", "--data", "dvs_gesture"], 2, "--data dvs_gesture needs --data-root"),
            (["train", "--model", "scnn", "--data", "cifar10", "--data-root", str(tmp_path)], 1, "data_batch_1"),
            (["train", "--model", "scnn", "--data", "dvs_gesture", "--data-root", str(tmp_path)], 1,
             "trials_to_train.txt"),
            (["train", "--model", "scnn", "--data", "imagefolder", "--data-root", str(tmp_path)], 1,
             f"no folder {tmp_path / 'train'}")):
        code, _, err = run(capsys, *argv)
        assert code == exit_code and needle in err and len(err.strip().splitlines()) == 1, (argv, err)



def test_threads_option_sets_torch_threads(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    code, _, err = run(capsys, "energy", "--checkpoint", "none.safetensors", "--threads", "1")
    assert code == 1 and "checkpoint not found" in err and calls == [1]
    code, _, err = run(capsys, "train", "--model", "scnn", "--threads", "0")
    assert code == 2 and "--threads must be at least 1" in err and calls == [1]
    code, _, err = run(capsys, "demo", "--threads", "1")  # the demo's own option goes after --
    assert code == 2 and "unrecognized arguments: --threads" in err


def test_model_class_names_what_create_builds_without_building_it(monkeypatch):
    # fresh --model: _data_defaults reads the constructor's parameters from model_class, which builds nothing
    import spiketwin.models as models
    from spiketwin.models import registry

    for name in models.available():
        with torch.device("meta"):  # no memory for the ImageNet-sized configurations
            built = models.create(name)
        assert models.model_class(name) is type(built), name

    def unannotated(**overrides):
        return torch.nn.Linear(2, 2)
    monkeypatch.setitem(registry._REGISTRY, "no_annotation", unannotated)
    with pytest.raises(TypeError, match="factory of 'no_annotation'.*return annotation"):
        models.model_class("no_annotation")
    with pytest.raises(KeyError, match="unknown model"):
        models.model_class("no_such_model")


def test_train_into_a_run_dir_another_run_holds_fails_without_touching_it(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl", reason="run directories are locked with fcntl.flock (POSIX only)")
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / "run.lock", "w") as held:  # stands for another run: its own open file, its own flock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        code, _, err = run(capsys, *TRAIN, "--run-dir", str(busy))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"run directory {busy.resolve()} is in use by another run (pid 4242" in err
    assert sorted(p.name for p in busy.iterdir()) == ["run.lock"]  # no run.json, metrics or checkpoint
