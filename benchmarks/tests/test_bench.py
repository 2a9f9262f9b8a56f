"""The benchmark's table, its command line, and one whole run at a tiny size."""
import subprocess
import sys
from pathlib import Path

import pytest
import timm

from benchmarks import bench
from benchmarks.measure import AgcTimes, Sizes
from tests.cli_helpers import assert_one_line_error


def test_format_results_prints_ratios_with_their_quartiles():
    results = bench.BenchResults(
        models={"timm": {"infer_img_s": 10.0, "train_peak_mib": 100.0},
                "zoo": {"infer_img_s": 12.0, "infer_img_s_speedup": 1.25, "infer_img_s_speedup_quartiles": (1.1, 1.3),
                        "train_peak_mib": 80.0}},
        agc=AgcTimes(timm_ms=4.0, nfzoo_ms=1.0, speedup=4.0), logits_diff={"zoo": 1e-6})
    lines = bench.format_results(results, Sizes()).splitlines()
    assert "12 (1.25x, 1.10-1.30)" in next(line for line in lines if line.startswith("inference (img/s)"))
    # an untimed metric: the ratio of the values, lower being better for memory
    assert "80 (1.25x)" in next(line for line in lines if line.startswith("train step peak"))
    assert "timm 4.0 ms, nfzoo 1.0 ms (4.00x)" in lines[-2] and "zoo: 1.00e-06" in lines[-1]


def test_cpu_defaults_and_flags_given():
    assert bench.parse_args(["--device", "cpu"]) == (bench.CPU_SIZES, None)
    sizes, threads = bench.parse_args(["--device", "cpu", "--warmup", "0", "--iters", "3", "--variant", "f1",
                                       "--threads", "1"])
    assert (sizes.warmup, sizes.iters, sizes.variant, threads) == (0, 3, "f1", 1)  # a zero stays a zero


def _must_not_run(*args):
    raise AssertionError("the benchmark ran despite a bad argument")


BAD_ARGS = [
    (["--variant", "f9"], "--variant"),
    (["--device", "tpu"], "--device"),
    (["--img-size", "0"], "--img-size"),
    (["--img-size", "big"], "--img-size"),
    (["--infer-batch", "0"], "--infer-batch"),
    (["--train-batch", "-2"], "--train-batch"),
    (["--iters", "0"], "--iters"),
    (["--warmup", "-1"], "--warmup"),
    (["--threads", "0"], "--threads"),
    (["--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("argv, fragment", BAD_ARGS)
def test_bad_arguments_are_one_line(argv, fragment, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run", _must_not_run)
    line = assert_one_line_error(bench.main, argv, capsys, expect=fragment)
    assert line.startswith(bench.PROG)


def test_benchmark_end_to_end_at_tiny_size(capsys, monkeypatch):
    """The whole CPU benchmark from its command line at 32 px: every model gets every metric,
    ratios against timm."""
    runs = []
    monkeypatch.setattr(bench, "run", lambda sizes, run=bench.run: runs.append(run(sizes)) or runs[-1])
    assert bench.main(["--device", "cpu", "--img-size", "32", "--infer-batch", "2", "--train-batch", "2",
                       "--iters", "2", "--warmup", "0"]) == 0
    results = runs[0]
    assert list(results.models) == ["timm dm_nfnet_f0", "nfzoo nfnet_f0 (timm)", "nfzoo nfnet_f0 (deepmind)"]
    for res in results.models.values():
        assert res["infer_tflops_speedup"] == res["infer_img_s_speedup"] > 0
        q1, q3 = res["train_img_s_speedup_quartiles"]
        assert 0 < q1 <= res["train_img_s_speedup"] <= q3
        assert res["train_peak_mib"] > 0
    assert results.models["timm dm_nfnet_f0"]["latency_ms_speedup"] == 1.0
    assert results.logits_diff["nfzoo nfnet_f0 (timm)"] < 1e-4  # the same function
    assert results.agc.timm_ms > 0 and results.agc.nfzoo_ms > 0
    out = capsys.readouterr().out
    assert f"timm {timm.__version__}" in out and "AGC over F0's params" in out


def test_make_bench_runs_the_benchmark_command():
    """``make bench`` runs ``python -m benchmarks.bench`` with ``BENCH_ARGS`` (here its help: the
    command's wiring, not a second benchmark run)."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(["make", "--no-print-directory", "-C", str(repo), "-o", "setup", "bench", f"VENV={sys.prefix}",
                           "BENCH_ARGS=--help"], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[0].endswith("-m benchmarks.bench --help")
    assert f"usage: {bench.PROG}" in done.stdout
