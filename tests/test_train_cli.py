"""``python -m nfzoo.train``: its flags and their checks, resuming, the checkpoint's model_config,
disk errors, and what a run prints and draws."""
import argparse
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from cli_helpers import assert_one_line_error
from nfzoo.errors import CheckpointError, NfzooError
from nfzoo.train import CHECKPOINT_NAME, TrainConfig, Trainer, load_checkpoint, read_metrics
from nfzoo.train.run_state import MODEL_CONFIG_KEYS, read_model_config
from nfzoo.train.config import TrainConfigError
from nfzoo.train.metrics_log import MetricsLog
from nfzoo.train.train_cli import build_parser, main
from test_train_trainer import REPO, TinyNet, tiny_dataset, write_fake_fashion_mnist

N_TRAIN = 16


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=N_TRAIN, n_test=8)
    return root


def quick(fmnist, out, *extra):
    """A one-epoch Fashion-MNIST run of nfnet_mini: 2 steps of 8 images."""
    return ["--model", "nfnet_mini", "--data-dir", str(fmnist), "--epochs", "1", "--batch-size", "8",
            "--warmup-epochs", "0.5", "--no-progress", "--no-plot", "--output-dir", str(out), *extra]


def write_image_folder(root, mode, classes=("cat", "dog"), per_class=4, size=20):
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(root / split / name / f"{i}.png")
    return root


# -- flags ---------------------------------------------------------------------------------

def test_every_flag_explains_itself_with_its_default():
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help and len(a.help) > 15 for a in options), [a.option_strings for a in options if not a.help]
    text = parser.format_help()
    for a in options:
        if a.default is not argparse.SUPPRESS and a.dest != "model":
            assert re.search(rf"{re.escape(a.option_strings[0])}\b.*?\(default: ", text, re.S), a.option_strings
    # the small-data defaults, and the DeepMind recipe named beside them
    args = build_parser().parse_args(["--model", "m"])
    assert (args.batch_size, args.epochs) == (128, 10)
    assert "--recipe deepmind: 4096" in " ".join(text.split())


def test_the_deepmind_recipe_is_a_preset_that_flags_override():
    from nfzoo.train.train_cli import parse_args

    dm = parse_args(["--model", "m", "--recipe", "deepmind"])
    default = TrainConfig()
    assert (dm.batch_size, dm.epochs, dm.warmup_epochs) == (default.batch_size, default.epochs, default.warmup_epochs)
    assert parse_args(["--model", "m", "--recipe", "deepmind", "--batch-size", "256"]).batch_size == 256


def _missing(tmp_path):
    return str(tmp_path / "missing")


def _a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return str(tmp_path / "file")


def _foreign_checkpoint(tmp_path):
    out = tmp_path / "foreign"
    out.mkdir(exist_ok=True)
    torch.save(timm.create_model("nfnet_mini").state_dict(), out / CHECKPOINT_NAME)
    return str(out)


# (flags, fragment of the one-line error); every flag that takes a value appears
BAD = [
    (["--model", "no_such_net"], "no such model"),
    (["--recipe", "huge"], "--recipe"),
    (["--dataset", "mnist"], "--dataset"),
    (["--data-dir", _missing], "--data-dir"),
    (["--train-limit", "0"], "--train-limit"),
    (["--img-size", "-3"], "--img-size"),
    (["--in-chans", "0"], "--in-chans"),
    (["--in-chans", "3"], "1 channel"),
    (["--drop-rate", "1.5"], "--drop-rate"),
    (["--drop-path-rate", "-0.1"], "--drop-path-rate"),
    (["--randaugment-magnitude", "-1"], "--randaugment-magnitude"),
    (["--mixup-alpha", "-1"], "--mixup-alpha"),
    (["--cutmix-alpha", "nan"], "--cutmix-alpha"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-8"], "--batch-size"),
    (["--batch-size", "64"], f"training set ({N_TRAIN} images)"),
    (["--micro-batch", "0"], "--micro-batch"),
    (["--micro-batch", "3"], "micro_batch 3 does not divide"),
    (["--base-lr", "0"], "--base-lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--warmup-epochs", "1"], "warmup_epochs must be shorter"),
    (["--min-lr", "-0.1"], "--min-lr"),
    (["--momentum", "1"], "--momentum"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--agc-clip", "-1"], "--agc-clip"),
    (["--agc-clip", "0"], "--agc-clip"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--ema-decay", "2"], "--ema-decay"),
    (["--precision", "fp8"], "--precision"),
    (["--seed", "-1"], "--seed"),
    (["--output-dir", _a_file], "is a file"),
    (["--resume", _missing], "--resume"),
    (["--output-dir", _foreign_checkpoint], "not an nfzoo.train checkpoint"),
    (["--ckpt-every", "-1"], "--ckpt-every"),
    (["--log-every", "0"], "--log-every"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--dataset", "folder", "--data-dir", None], "--data-dir"),
    (["--dataset", "folder", "--data-dir", lambda tmp: str(tmp)], "train"),
]


@pytest.mark.parametrize("flags,expect", BAD, ids=[" ".join(str(f) if f is None or isinstance(f, str) else "<path>"
                                                             for f in flags) for flags, _ in BAD])
def test_a_bad_argument_is_one_line(flags, expect, fmnist, tmp_path, capsys):
    flags = [f(tmp_path) if callable(f) else f for f in flags]
    argv = quick(fmnist, tmp_path / "run")
    for flag, value in zip(flags[::2], flags[1::2]):  # replace a flag quick() sets (None: drop it), else add it
        if value is None:
            del argv[argv.index(flag):argv.index(flag) + 2]
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert_one_line_error(main, argv, capsys, expect=expect)


def test_every_flag_that_takes_a_value_is_in_the_table():
    tested = {f for flags, _ in BAD for f in flags if isinstance(f, str) and f.startswith("--")}
    takes_value = {a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.nargs != 0}
    assert takes_value <= tested, takes_value - tested


def test_train_config_checks_for_python_callers_too():
    for bad in ({"ema_decay": 2.0}, {"lr": float("nan")}, {"micro_batch": 0}, {"agc_clip": 0},
                {"epochs": 2, "warmup_epochs": 2.0}):
        with pytest.raises(TrainConfigError) as e:
            TrainConfig(**bad)
        assert isinstance(e.value, NfzooError) and next(iter(bad)) in str(e.value)
    with pytest.raises(TrainConfigError, match="micro_batch 3 does not divide"):
        TrainConfig(batch_size=16, micro_batch=3).per_process_batch(1)


# -- resuming ------------------------------------------------------------------------------

def lr_by_step(run_dir):
    return {r["step"]: r["lr"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "lr" in r}


def test_a_resumed_run_says_so_and_follows_the_new_epochs(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick(fmnist, out, "--log-every", "1")) == 0
    assert "resuming" not in capsys.readouterr().out
    longer = quick(fmnist, out, "--log-every", "1")
    longer[longer.index("--epochs") + 1] = "2"
    assert main(longer) == 0
    assert f"resuming {out} at epoch 2, step 2" in capsys.readouterr().out
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 2
    # the steps after the resume follow a 2-epoch schedule: that of a fresh 2-epoch run
    fresh = tmp_path / "fresh"
    longer[longer.index("--output-dir") + 1] = str(fresh)
    assert main(longer) == 0
    resumed, reference = lr_by_step(out), lr_by_step(fresh)
    assert [resumed[s] for s in (3, 4)] == [reference[s] for s in (3, 4)]


@pytest.fixture(scope="module")
def finished_run(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(quick(fmnist, out)) == 0
    return out


@pytest.mark.parametrize("change,expect", [
    (["--lr", "0.5"], "--lr none -> 0.5"),
    (["--label-smoothing", "0.2"], "--label-smoothing 0.1 -> 0.2"),
    (["--train-limit", "8"], "--train-limit none -> 8"),
    (["--model", "test_nfnet"], "another model"),
])
def test_resume_refuses_a_changed_setting_in_one_line(change, expect, fmnist, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    line = assert_one_line_error(main, quick(fmnist, out, *change), capsys, expect=expect)
    assert "--no-resume" in line
    assert (out / CHECKPOINT_NAME).read_bytes() == (finished_run / CHECKPOINT_NAME).read_bytes()


def test_no_resume_starts_afresh_with_other_settings(fmnist, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert main(quick(fmnist, out, "--lr", "0.5", "--no-resume")) == 0
    assert "resuming" not in capsys.readouterr().out
    assert load_checkpoint(out / CHECKPOINT_NAME)["config"]["lr"] == 0.5


def test_resume_refuses_another_models_weights_without_a_model_config(tmp_path):
    def trainer(classes):
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1, warmup_epochs=0, progress=False, plot=False,
                          output_dir=str(tmp_path))
        return Trainer(TinyNet(num_classes=classes), tiny_dataset(classes=classes), cfg)

    trainer(4).save()
    shapes = r"fc\.weight: \(4, 8\) in the checkpoint, \(5, 8\) here"
    with pytest.raises(CheckpointError, match=r"another model's weights .*" + shapes):
        trainer(5)


# -- the checkpoint's model_config -------------------------------------------------------------

@pytest.mark.parametrize("mode,chans", [("L", 1), ("RGB", 3)])
def test_a_folder_run_of_any_channel_count_writes_its_model_config(mode, chans, tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", mode)
    out = tmp_path / "run"
    assert main(["--model", "nfnet_mini", "--dataset", "folder", "--data-dir", str(data), "--epochs", "1",
                 "--batch-size", "4", "--warmup-epochs", "0", "--randaugment-magnitude", "5", "--no-progress",
                 "--no-plot", "--output-dir", str(out)]) == 0
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    config = read_model_config(checkpoint)
    assert list(checkpoint["model_config"]) == list(MODEL_CONFIG_KEYS)
    assert json.loads((out / "model_config.json").read_text()) == config
    assert config["architecture"] == "nfnet_mini" and config["label_names"] == ["cat", "dog"]
    assert (config["num_classes"], config["in_chans"]) == (2, chans)
    assert config["input_size"][0] == chans and len(config["mean"]) == len(config["std"]) == chans
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], in_chans=config["in_chans"])
    model.load_state_dict(checkpoint["model"])  # strict: the config rebuilds the trained model


def test_read_model_config_of_other_checkpoints():
    assert read_model_config({"model": {}}) is None
    with pytest.raises(CheckpointError, match="lacks"):
        read_model_config({"model_config": {"architecture": "nfnet_mini"}})


# -- disk errors ---------------------------------------------------------------------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_append_leaves_the_metrics_log_as_it_was(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "train_loss": 1.0})
    before = log.path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        _enospc()

    with monkeypatch.context() as m:
        m.setattr(os, "write", half_then_full)
        with pytest.raises(NfzooError, match="metrics.jsonl"):
            log.write({"step": 2, "train_loss": 0.5})
    assert log.path.read_bytes() == before and log.records == 1


@pytest.mark.parametrize("target", ["metrics.jsonl", CHECKPOINT_NAME, "metrics.png"])
def test_a_full_disk_is_one_line_naming_the_file(target, fmnist, tmp_path, capsys, monkeypatch):
    if target == "metrics.jsonl":
        monkeypatch.setattr(os, "write", _enospc)
    elif target == CHECKPOINT_NAME:
        monkeypatch.setattr(torch, "save", _enospc)
    else:
        from matplotlib.figure import Figure
        monkeypatch.setattr(Figure, "savefig", _enospc)
    out = tmp_path / "run"
    argv = quick(fmnist, out, "--plot")
    line = assert_one_line_error(main, argv, capsys, expect=str(out / target))
    assert "no space left" in line
    assert not list(out.glob(".*.partial"))
    assert not (out / target).exists() or (out / target).read_bytes() == b""  # an append cut back to nothing


def test_a_checkpoint_past_the_file_size_limit_is_one_line(fmnist, tmp_path):
    """EFBIG for real: ``ulimit -f`` lets the log and model_config.json through, not last.pth."""
    out = tmp_path / "run"
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
    proc = subprocess.run([sys.executable, "-c", limit + "import sys; from nfzoo.train.train_cli import main; "
                           "sys.exit(main(sys.argv[1:]))", *quick(fmnist, out)],
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(out / CHECKPOINT_NAME) in lines[0] and "largest size" in lines[0]
    assert not (out / CHECKPOINT_NAME).exists() and not list(out.glob(".*.partial"))
    assert (out / "model_config.json").is_file()


# -- what a run prints and draws ---------------------------------------------------------------------

def test_each_epoch_prints_a_summary_line_without_progress_bars(fmnist, tmp_path, capsys):
    argv = quick(fmnist, tmp_path / "run")
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0
    out = capsys.readouterr().out
    for epoch in (1, 2):
        assert re.search(rf"^epoch {epoch}/2, train loss \d+\.\d+, val top-1 \d+\.\d\d% \(EMA \d+\.\d\d%\), "
                         r"lr [\d.e-]+, \d+ images/s$", out, re.M), out


def test_the_plot_is_drawn_or_its_absence_said_once(fmnist, tmp_path, capsys, monkeypatch):
    argv = quick(fmnist, tmp_path / "drawn", "--plot")
    assert main(argv) == 0
    assert (tmp_path / "drawn" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matplotlib" not in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "bare")
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1
    assert not (tmp_path / "bare" / "metrics.png").exists()


def test_a_short_run_has_no_cosine_warning(fmnist, tmp_path, caplog):
    recipe = quick(fmnist, tmp_path / "recipe")  # 2 epochs of 2 steps with the small recipe's warmup
    recipe[recipe.index("--epochs") + 1] = "2"
    del recipe[recipe.index("--warmup-epochs"):recipe.index("--warmup-epochs") + 2]
    one_step = quick(fmnist, tmp_path / "one_step")  # 2 steps, one of warmup: a one-step decay
    with caplog.at_level(logging.WARNING):
        assert main(recipe) == 0 and main(one_step) == 0
    assert not [r for r in caplog.records if "Cosine annealing" in r.getMessage()]
