"""How reports name the machine a figure was measured on."""
import os

import torch

from nfzoo.machine import cpu_name, device_name


def test_cpu_named_with_cores_and_kernel_instruction_set():
    name = device_name(torch.device("cpu"))
    assert name.startswith(cpu_name())
    assert f"{os.cpu_count()} cores" in name
    assert torch.backends.cpu.get_cpu_capability() in name  # AVX2 or AVX512 moves every CPU figure
