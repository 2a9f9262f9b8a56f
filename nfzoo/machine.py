"""What machine a measurement ran on, in words, for reports."""
from __future__ import annotations

import contextlib
import os
import platform

import torch

__all__ = ["cpu_name", "device_name"]


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return name


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's name, its core count and the vector
    instruction set torch's CPU kernels use (``AVX2``, ``AVX512``): a virtual machine often names
    only "Intel Xeon", and CPU figures move with the instruction set."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})"
