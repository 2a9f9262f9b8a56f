"""The study's command: resume after a kill, and its argument errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reproduction import experiments, run as study
from reproduction.experiments import Setup
from tests.cli_helpers import assert_one_line_error
from tests.test_train_trainer import write_fake_fashion_mnist


class _Killed(Exception):
    pass


def test_study_resumes_after_a_kill(tmp_path, monkeypatch):
    """A study killed in the middle of a run, rerun with the same command, ends with the results of an
    uninterrupted one: finished runs are skipped, the killed run resumes from its checkpoint."""
    write_fake_fashion_mnist(tmp_path, n_train=64, n_test=20)
    sizes = Setup(batch=16, micro_batches=(8, 4), widths=(4, 8, 8), agc_batches=(32,), agc_base_lrs=(0.4,),
                  agc_clips=(None,))
    args = ["--data-dir", str(tmp_path), "--epochs", "2", "--train-images", "64", "--test-images", "20", "--seeds", "0",
            "--norms", "bn", "gn", "--jobs", "1"]
    torch.set_num_threads(1)

    def run(name: str) -> list[dict]:
        assert study.main(args + ["--out", str(tmp_path / name), "--work", str(tmp_path / f"{name}-work")], sizes) == 0
        return list(csv.DictReader((tmp_path / name / "norms.csv").open()))

    uninterrupted = run("whole")
    calls, train_step = {"n": 0}, experiments.Trainer.train_step

    def dies_in_the_fourth_run(self, x, y):  # runs: bn 8, bn 4, gn, then bn at agc batch 32
        calls["n"] += 1
        if calls["n"] == 3 * 8 + 3:  # 8 steps per run of the norm table; run 4 (4 steps) in its epoch 2
            raise _Killed
        return train_step(self, x, y)

    monkeypatch.setattr(experiments.Trainer, "train_step", dies_in_the_fourth_run)
    with pytest.raises(_Killed):
        run("killed")
    assert len(list(csv.DictReader((tmp_path / "killed" / "norms.csv").open()))) == 3
    assert (tmp_path / "killed-work" / "agc-bn-32-0.4-None-0" / "last.pth").is_file()  # epoch 1 of run 4
    steps = {"n": 0}

    def counted(self, x, y):
        steps["n"] += 1
        return train_step(self, x, y)

    monkeypatch.setattr(experiments.Trainer, "train_step", counted)
    resumed = run("killed")
    assert steps["n"] == 2 + 4  # run 4's epoch 2 (its epoch 1 is in the checkpoint), then run 5
    key = lambda r: (r["norm"], r["micro_batch"])  # noqa: E731
    assert [(key(r), r["test_error"]) for r in sorted(resumed, key=key)] == \
        [(key(r), r["test_error"]) for r in sorted(uninterrupted, key=key)]
    whole_agc, resumed_agc = (list(csv.DictReader((tmp_path / n / "agc.csv").open())) for n in ("whole", "killed"))
    assert [r["losses"] for r in resumed_agc] == [r["losses"] for r in whole_agc]
    meta = json.loads((tmp_path / "killed" / "meta.json").read_text())
    assert meta["seeds"] == [0] and meta["runs"] == 5 and meta["device"]
    assert (tmp_path / "killed" / "norms.md").is_file() and (tmp_path / "killed" / "agc.png").is_file()
    assert meta["command"].startswith("python -m reproduction --data-dir")


BAD_ARGS = [
    (["--out", __file__], "--out"),  # a file, not a folder
    (["--work", __file__], "--work"),
    (["--data-dir", "/nonexistent/fashion-mnist"], "--data-dir"),
    (["--device", "tpu"], "--device"),
    (["--norms", "bn", "nonesuch"], "--norms"),
    (["--seeds", "0", "-1"], "--seeds"),
    (["--seeds", "one"], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--train-images", "0"], "--train-images"),
    (["--train-images", "100"], "less than one batch of the study"),
    (["--test-images", "0"], "--test-images"),
    (["--only", "both"], "--only"),
    (["--jobs", "0"], "--jobs"),
    (["--threads", "0"], "--threads"),
]


def _must_not_run(*args):
    raise AssertionError("the study started despite a bad argument")


@pytest.mark.parametrize("argv, fragment", BAD_ARGS)
def test_bad_arguments_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "load_data", _must_not_run)
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    line = assert_one_line_error(study.main, argv + out, capsys, expect=fragment)
    assert line.startswith(study.PROG) and not (tmp_path / "out").exists()


def test_missing_data_is_one_line_with_the_install_hint(capsys, tmp_path):
    line = assert_one_line_error(study.main, ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")], capsys,
                                 expect="Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in line and not (tmp_path / "out").exists()


def test_the_study_command_runs_from_a_checkout():
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "reproduction", "--help"], cwd=repo, capture_output=True, text=True,
                          check=True)
    assert done.stdout.startswith(f"usage: {study.PROG}")
