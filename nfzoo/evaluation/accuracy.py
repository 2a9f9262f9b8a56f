"""Top-k accuracy as integer counts, so that sums over batches and processes are exact."""
from __future__ import annotations

import torch

__all__ = ["TOPK", "topk_correct", "percent"]

TOPK = (1, 5)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = TOPK) -> torch.Tensor:
    """For each k in ``ks``, how many rows of ``logits`` (B, C) have ``target`` among their k
    highest scores. Returns an int64 tensor of len(ks) on the logits' device."""
    maxk = min(max(ks), logits.shape[1])
    hits = logits.topk(maxk, dim=1).indices.eq(target[:, None])
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])


def percent(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else float("nan")
