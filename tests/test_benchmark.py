"""The benchmark's measuring helpers (the benchmark itself is a script: eval/bench.py)."""
import torch

from nfzoo.benchmark import BenchConfig, device_peak_tflops, peak_step_memory, speedups, time_rounds


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


def test_rounds_interleave_the_functions_and_ratios_are_per_round():
    calls = []
    times = time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        BenchConfig(device="cpu", iters=3, warmup=2))
    assert calls == ["a", "b"] * 5 and [len(t) for t in times.values()] == [3, 3]
    # the load rises after round 1 and spares "fast" once: per round it is 2x every time but that
    # once, while the ratio of the medians (4 / 0.5) would say 8x
    ratios = speedups({"ref": [1.0, 4.0, 4.0], "fast": [0.5, 0.5, 2.0]}, "ref")
    assert ratios == {"ref": 1.0, "fast": 2.0}
