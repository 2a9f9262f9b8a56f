"""Micro-batches ("ghost batches") for the batch-dependent norms written in nfzoo.

Given ``micro_batch=b``, such a norm splits a training batch into consecutive micro-batches of
``b`` images and normalizes each with its own statistics, updating its running statistics once
per micro-batch, in order: one call computes what ``N / b`` calls on the micro-batches would,
which is what each GPU's norm computes in data-parallel training without synchronized
statistics (and what gradient accumulation over micro-batches computes). Ghost batch
normalization: Hoffer, Hubara and Soudry, "Train longer, generalize better" (NeurIPS 2017,
arXiv 1705.08741). The statistics of all micro-batches come from one vectorized pass, so
small micro-batches cost little more than one big batch.
"""
from __future__ import annotations

import torch

__all__ = ["split_micro_batches", "lerp_sequence"]


def split_micro_batches(x: torch.Tensor, micro_batch: int | None) -> torch.Tensor:
    """``x`` (N, C, H, W) viewed as (N / b, b, C, H, W): one row per micro-batch of ``b`` images
    (the whole batch when ``micro_batch`` is None or at least N)."""
    n = x.shape[0]
    b = n if micro_batch is None or micro_batch >= n else micro_batch
    if n % b:
        raise ValueError(f"a batch of {n} images does not split into micro-batches of {b}: use a batch size "
                         f"that is a multiple of micro_batch={b}")
    return x.view(n // b, b, *x.shape[1:])


@torch.no_grad()
def lerp_sequence(start: torch.Tensor, values: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """The states of ``state.lerp_(value, weight)`` applied for each row of ``values`` (k, C) in turn,
    from ``start`` (C,): a (k + 1, C) tensor whose row i is the state before value i is taken in
    (row k: after all of them). Closed form, ``s_i = q^i s_0 + weight * sum_{j<i} q^(i-1-j) v_j``
    with ``q = 1 - weight``, so that it costs a few ops whatever k is (a plain lerp for k = 1).
    ``weight`` may be a one-element tensor (a buffer): it is never read back to the host."""
    k = values.shape[0]
    if k == 1:  # the common case, one update: no need for the closed form
        w = weight.to(start.dtype) if isinstance(weight, torch.Tensor) else weight
        return torch.stack([start, start.lerp(values[0].to(start.dtype), w)])
    steps = torch.arange(k + 1, dtype=torch.float64, device=values.device)
    w = torch.as_tensor(weight, dtype=torch.float64, device=values.device)
    q = 1.0 - w
    lags = steps.view(-1, 1) - 1 - steps[:k].view(1, -1)  # i - 1 - j
    coefs = torch.where(lags >= 0, w * q ** lags.clamp(min=0), torch.zeros((), dtype=torch.float64))
    states = (q ** steps).view(-1, 1) * start.double() + coefs @ values.double()
    return states.to(start.dtype)
