"""Speed of nfzoo against timm, beside the library (docs/speed.md)::

    python -m benchmarks.bench                           # NFNet-F0 against timm's dm_nfnet_f0
    PYTHONPATH=. python3 -m benchmarks.gpu_check --out DIR   # the GPU check (make gpu-check)

Run from the repository root; both use nfzoo's public API only.
"""
import os

# The CPU peak-memory figure comes from torch's profiler, whose tracing library (Kineto) logs
# its stages to stderr, and on a machine without a GPU an "ERROR" line about the missing device.
# Level 5 drops both; Kineto reads it as torch loads, which is after this package's import.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")
