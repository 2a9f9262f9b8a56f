"""The GPU check's CPU dry run (every section's code path, tiny sizes, from its command line),
its target verdicts and its command line's errors."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import QUICK, TARGETS, CheckConfig, format_markdown, main, parse_args, target_verdicts
from tests.cli_helpers import assert_one_line_error

DRY_RUN = ["--device", "cpu", "--img-size", "32", "--resnet-img-size", "32", "--infer-batch", "2",
           "--train-batch", "2", "--iters", "1", "--warmup", "0", "--harness-images", "4",
           "--harness-workers", "0", "--compile-backend", "eager", "--compile-reserve-s", "0", "--budget-s", "1e9"]
SECTIONS = ["build_f0", "f0_inference", "f0_train", "agc", "profile", "resnet50", "harness", "f0_inference_compiled"]


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``make gpu-check`` as the GPU machine runs it (its python3 with ``PYTHONPATH=.``), at tiny sizes."""
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "gpu-check", f"PYTHON={sys.executable}",
                    f"OUT={out}", f"GPU_CHECK_ARGS={shlex.join(DRY_RUN)}"], check=True)
    return json.loads((out / "gpu_check.json").read_text()), out


def test_dry_run_writes_every_section(dry_run):
    written, _ = dry_run
    assert list(written["sections"]) == SECTIONS
    assert not any("error" in s or "skipped" in s for s in written["sections"].values())
    s = written["sections"]
    assert set(s["f0_inference"]["models"]) == {"timm", "nfzoo fused", "nfzoo unfused"}
    assert s["f0_inference"]["models"]["timm"]["ratio_vs_timm"] == 1.0
    assert all(m["img_s"] > 0 and m["tflops"] > 0 for m in s["f0_inference"]["models"].values())
    assert s["f0_inference"]["gflops_per_image"] > 0.1  # F0 at 32 px: about 0.44
    assert set(s["f0_inference_compiled"]["compile_s"]) == {"timm", "nfzoo fused"}
    assert all(m["peak_mib"] > 0 for m in s["f0_train"]["models"].values())
    assert s["agc"]["ratio"] > 0 and s["harness"]["ratio"] > 0
    assert set(s["resnet50"]["inference"]) == {"timm", "nfzoo resnet50_gn_ws", "nfzoo resnet50_bcn_ws",
                                                "nfzoo resnet50_gn_ws fused", "nfzoo resnet50_bcn_ws fused"}
    assert {"inference nfzoo fused", "train timm"} <= set(s["profile"])
    assert all(s["profile"]["inference nfzoo fused"][0][k] for k in ("op", "calls", "self_ms"))
    # no CUDA: no peak, so the %-of-peak target is unmeasured; the others have a verdict
    assert [t["met"] is None for t in written["targets"]] == [t.metric == "pct_peak" for t in TARGETS]
    assert written["settings"]["img_size"] == 32 and written["settings"]["warmup"] == 0


def test_markdown_has_targets_and_every_model_row(dry_run):
    written, out = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md == format_markdown(written)
    for t in TARGETS:
        assert f"| {t.name} |" in md
    for label in ("nfzoo fused", "nfzoo unfused", "nfzoo resnet50_bcn_ws fused"):
        assert f"| {label} |" in md
    assert "Harness on 4 generated images" in md and "AGC over F0's parameters" in md


def test_target_verdicts():
    sections = {
        "f0_inference": {"models": {"nfzoo fused": {"ratio_vs_timm": 1.6, "pct_peak": 34.9}}},
        "f0_train": {"models": {"nfzoo": {"ratio_vs_timm": 1.1, "peak_vs_timm": 1.01}}},
    }
    verdicts = {t["target"]: t["met"] for t in target_verdicts(sections)}
    assert list(verdicts.values()) == [True, False, True, False, None]  # AGC not measured
    sections["agc"] = {"ratio": 3.0}
    sections["f0_train"]["models"]["nfzoo"]["peak_vs_timm"] = 1.0
    assert [t["met"] for t in target_verdicts(sections)][3:] == [True, True]


def test_quick_and_flags_given(tmp_path):
    cfg, out = parse_args(["--out", str(tmp_path), "--device", "cpu", "--quick", "--iters", "7", "--warmup", "0"])
    assert out == tmp_path
    assert (cfg.iters, cfg.warmup, cfg.harness_images, cfg.compile) == (7, 0, QUICK["harness_images"], False)
    cfg, _ = parse_args(["--out", str(tmp_path), "--device", "cpu", "--no-profile"])
    assert (cfg.iters, cfg.compile, cfg.profile) == (CheckConfig.iters, True, False)


BAD_ARGS = [
    ([], "--out"),  # required
    (["--out", __file__], "--out"),  # a file, not a folder
    (["--device", "tpu"], "--device"),
    (["--img-size", "0"], "--img-size"),
    (["--infer-batch", "x"], "--infer-batch"),
    (["--train-batch", "0"], "--train-batch"),
    (["--resnet-img-size", "-224"], "--resnet-img-size"),
    (["--iters", "0"], "--iters"),
    (["--warmup", "-1"], "--warmup"),
    (["--harness-images", "0"], "--harness-images"),
    (["--harness-workers", "-1"], "--harness-workers"),
    (["--compile-backend", "nonesuch"], "--compile-backend"),
    (["--budget-s", "0"], "--budget-s"),
    (["--budget-s", "nan"], "--budget-s"),
    (["--compile-reserve-s", "-5"], "--compile-reserve-s"),
]


def _must_not_run(*args):
    raise AssertionError("the check ran despite a bad argument")


@pytest.mark.parametrize("argv, fragment", BAD_ARGS)
def test_bad_arguments_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "run", _must_not_run)
    out = [] if "--out" in argv or not argv else ["--out", str(tmp_path)]
    line = assert_one_line_error(main, out + argv, capsys, expect=fragment)
    assert line.startswith(gpu_check.PROG)
