"""The GPU check's CPU dry run (every section's code path, tiny sizes) and its target verdicts."""
import json

import pytest

from nfzoo.gpu_check import TARGETS, format_markdown, main, target_verdicts

DRY_RUN = ["--device", "cpu", "--img-size", "32", "--resnet-img-size", "32", "--infer-batch", "2",
           "--train-batch", "2", "--iters", "1", "--warmup", "0", "--harness-images", "4",
           "--harness-workers", "0", "--compile-backend", "eager", "--compile-reserve-s", "0", "--budget-s", "1e9"]
SECTIONS = ["build_f0", "f0_inference", "f0_train", "agc", "profile", "resnet50", "harness", "f0_inference_compiled"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    return main(["--out", str(out)] + DRY_RUN), out


def test_dry_run_writes_every_section(dry_run):
    results, out = dry_run
    written = json.loads((out / "gpu_check.json").read_text())
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
    assert [t["met"] is None for t in written["targets"]] == [t[1] == "f0_inference" and t[3] == "pct_peak"
                                                              for t in TARGETS]
    assert written == json.loads(json.dumps(results, default=str))


def test_markdown_has_targets_and_every_model_row(dry_run):
    results, out = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md == format_markdown(results)
    for t in TARGETS:
        assert f"| {t[0]} |" in md
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
