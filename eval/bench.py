"""Benchmark nfzoo's NFNets against timm's on the same weights; see nfzoo/benchmark.py.

    PYTHONPATH=. python eval/bench.py                 # CPU float32, small defaults (< 5 min on 2 cores)
    PYTHONPATH=. python eval/bench.py --device cuda   # bf16 + channels_last, batch 256 at 256 px
"""
import os

# The CPU peak-memory figure comes from torch's profiler, whose tracing library (Kineto) logs
# its stages to stderr, and on a machine without a GPU an "ERROR" line about the missing device.
# Level 5 drops both (the start/stop trace lines remain); Kineto reads it as torch loads.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

from nfzoo.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
