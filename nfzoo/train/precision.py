"""The arithmetic of a training step: DeepMind's bf16 scheme, torch autocast, or float32.

``deepmind-bf16`` is ``nfnets/experiment.py``'s ``_train_fn`` with ``bfloat16=True``: the
parameters stay float32 (the optimizer's, AGC's and the EMA's copy); each forward runs on bf16
casts of them and of the images, so every op, weight standardization included, sees bf16
tensors; the logits are cast to float32 for the loss; the gradients come back through the casts
as float32 before AGC and the update. Floating buffers (batch-norm statistics) take the same
round trip, as DeepMind's states do. Evaluation runs in float32 (DeepMind's ``_eval_fn`` casts
nothing).

``autocast-bf16`` / ``autocast-fp16`` run the forward under ``torch.autocast`` (float32
parameters; each op picks its own precision, reductions such as normalization statistics in
float32); fp16 adds gradient scaling. ``fp32`` casts nothing. ``auto`` is ``deepmind-bf16`` on a
GPU and ``fp32`` elsewhere.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from torch.func import functional_call

__all__ = ["Precision", "PRECISIONS", "resolve_precision", "autocast_dtype", "cast_forward"]

Precision = Literal["auto", "deepmind-bf16", "autocast-bf16", "autocast-fp16", "fp32"]
PRECISIONS: tuple[str, ...] = Precision.__args__


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` decided for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "deepmind-bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: no autocast)."""
    return {"autocast-bf16": torch.bfloat16, "autocast-fp16": torch.float16}.get(precision)


def cast_forward(net: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``net(x)`` with its parameters, floating buffers and ``x`` cast to ``dtype``; float32
    logits. The casts are differentiable, so the gradients reach the float32 parameters in
    float32; the module's own tensors are not replaced (``torch.func.functional_call``), and the
    buffers' updates are copied back into them."""
    params = {name: p.to(dtype) for name, p in net.named_parameters()}
    originals = {name: b for name, b in net.named_buffers() if b.is_floating_point()}
    buffers = {name: b.to(dtype) for name, b in originals.items()}
    out = functional_call(net, {**params, **buffers}, (x.to(dtype),))
    with torch.no_grad():
        for name, b in originals.items():
            b.copy_(buffers[name])
    return out.float()
