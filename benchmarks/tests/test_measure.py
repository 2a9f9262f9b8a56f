"""The measuring helpers the benchmark and the GPU check share."""
import argparse

import torch

from benchmarks.measure import (DENSE_BF16_TFLOPS, Sizes, dense_bf16_peak, peak_step_memory, speedup_quartiles,
                                speedups, time_rounds, with_flags)


def test_peak_table_lookup_takes_the_most_specific_name():
    assert dense_bf16_peak("NVIDIA H100 80GB HBM3") == DENSE_BF16_TFLOPS["H100"]
    assert dense_bf16_peak("NVIDIA H100 PCIe") == DENSE_BF16_TFLOPS["H100 PCIe"]
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB") == DENSE_BF16_TFLOPS["A100"]
    assert dense_bf16_peak("Some Future GPU") is None


def test_cpu_peak_step_memory_sees_transient_allocations():
    kept = []

    def step():
        a = torch.ones(1 << 20)  # 4 MiB, freed on return
        b = torch.ones(1 << 19)  # 2 MiB alive together with a: peak 6 MiB
        kept.append(a[:1] + b[:1])

    peak = peak_step_memory(step, Sizes(device="cpu"))
    assert 6 * 2**20 <= peak < 7 * 2**20


def test_rounds_interleave_the_functions_in_rotating_order_and_ratios_are_per_round():
    calls = []
    times = time_rounds({name: (lambda name=name: calls.append(name)) for name in "abc"},
                        Sizes(device="cpu", iters=3, warmup=2))
    assert "".join(calls) == "abc" "bca" "cab" "abc" "bca" and [len(t) for t in times.values()] == [3, 3, 3]
    # the load rises after round 1 and spares "fast" once: per round it is 2x every time but that
    # once, while the ratio of the medians (4 / 0.5) would say 8x
    ratios = speedups({"ref": [1.0, 4.0, 4.0], "fast": [0.5, 0.5, 2.0]}, "ref")
    assert ratios == {"ref": 1.0, "fast": 2.0}


def test_speedup_quartiles_show_the_spread_of_the_round_ratios():
    times = {"ref": [1.0] * 5, "fast": [1 / 2, 1 / 1, 1 / 3, 1 / 5, 1 / 4]}  # per-round ratios 2, 1, 3, 5, 4
    assert speedup_quartiles(times, "ref") == {"ref": (1.0, 1.0), "fast": (2.0, 4.0)}
    assert speedup_quartiles({"ref": [1.0], "fast": [0.5]}, "ref")["fast"] == (2.0, 2.0)  # one round


def test_with_flags_takes_the_given_fields_only_and_keeps_a_zero():
    sizes = with_flags(Sizes(warmup=5), argparse.Namespace(warmup=0, iters=3, threads=2))
    assert sizes == Sizes(warmup=0, iters=3)  # threads: not a field of Sizes
    assert with_flags(Sizes(), argparse.Namespace()) == Sizes()
