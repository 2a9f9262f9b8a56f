"""The benchmark (eval/bench.py): its measuring helpers, its table, and one whole run at a tiny size."""
import timm
import torch

from nfzoo.benchmark import (BenchConfig, device_peak_tflops, format_results, peak_step_memory, speedup_quartiles,
                             speedups, time_rounds)


def test_peak_table_lookup():
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert device_peak_tflops("Some Future GPU") is None


def test_cpu_peak_step_memory_sees_transient_allocations():
    kept = []

    def step():
        a = torch.ones(1 << 20)  # 4 MiB, freed on return
        b = torch.ones(1 << 19)  # 2 MiB alive together with a: peak 6 MiB
        kept.append(a[:1] + b[:1])

    peak = peak_step_memory(step, BenchConfig(device="cpu"))
    assert 6 * 2**20 <= peak < 7 * 2**20


def test_rounds_interleave_the_functions_in_rotating_order_and_ratios_are_per_round():
    calls = []
    times = time_rounds({name: (lambda name=name: calls.append(name)) for name in "abc"},
                        BenchConfig(device="cpu", iters=3, warmup=2))
    assert "".join(calls) == "abc" "bca" "cab" "abc" "bca" and [len(t) for t in times.values()] == [3, 3, 3]
    # the load rises after round 1 and spares "fast" once: per round it is 2x every time but that
    # once, while the ratio of the medians (4 / 0.5) would say 8x
    ratios = speedups({"ref": [1.0, 4.0, 4.0], "fast": [0.5, 0.5, 2.0]}, "ref")
    assert ratios == {"ref": 1.0, "fast": 2.0}


def test_speedup_quartiles_show_the_spread_of_the_round_ratios():
    times = {"ref": [1.0] * 5, "fast": [1 / 2, 1 / 1, 1 / 3, 1 / 5, 1 / 4]}  # per-round ratios 2, 1, 3, 5, 4
    assert speedup_quartiles(times, "ref") == {"ref": (1.0, 1.0), "fast": (2.0, 4.0)}
    assert speedup_quartiles({"ref": [1.0], "fast": [0.5]}, "ref")["fast"] == (2.0, 2.0)  # one round


def test_format_results_prints_ratios_with_their_quartiles():
    results = {"logits_max_abs_diff_vs_timm": {"zoo": 1e-6}, "agc": {"agc_timm_ms": 4.0, "agc_nfzoo_ms": 1.0, "agc_speedup": 4.0},
               "timm": {"infer_img_s": 10.0}, "zoo": {"infer_img_s": 12.0, "infer_img_s_speedup": 1.25,
                                                       "infer_img_s_speedup_quartiles": (1.1, 1.3)}}
    row = next(line for line in format_results(results, "timm", BenchConfig()).splitlines() if line.startswith("inference"))
    assert "12 (1.25x, 1.10-1.30)" in row


def test_benchmark_end_to_end_at_tiny_size(capsys):
    """The whole CPU benchmark at 32 px: every model gets every metric, ratios against timm."""
    from nfzoo.benchmark import main

    results = main(["--device", "cpu", "--img-size", "32", "--infer-batch", "2", "--train-batch", "2",
                    "--iters", "2", "--warmup", "0"])
    models = [k for k in results if k not in ("agc", "logits_max_abs_diff_vs_timm")]
    assert models == ["timm dm_nfnet_f0", "nfzoo nfnet_f0 (timm)", "nfzoo nfnet_f0 (deepmind)"]
    for label in models:
        res = results[label]
        assert res["infer_tflops_speedup"] == res["infer_img_s_speedup"] > 0
        q1, q3 = res["train_img_s_speedup_quartiles"]
        assert 0 < q1 <= res["train_img_s_speedup"] <= q3
    assert results["timm dm_nfnet_f0"]["latency_ms_speedup"] == 1.0
    assert results["logits_max_abs_diff_vs_timm"]["nfzoo nfnet_f0 (timm)"] < 1e-4  # the same function
    out = capsys.readouterr().out
    assert f"timm {timm.__version__}" in out and "AGC over F0's params" in out
