"""The benchmark's measuring helpers (the benchmark itself is a script: eval/bench.py)."""
import torch

from nfzoo.benchmark import BenchConfig, device_peak_tflops, peak_step_memory


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
