"""The two experiments: normalizers vs. per-GPU batch (GN paper, Fig. 1 / Table), and AGC vs. none
for an NF-ResNet at large batch and high learning rate (NFNet paper, section 4.1)."""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ...atomic_files import atomic_open
from ..config import TrainConfig
from ..data import fashion_mnist
from ..metrics_log import read_metrics
from ..trainer import Trainer
from .networks import SmallResNet, small_nf_resnet

__all__ = ["Setup", "NORMS", "GROUPED", "run_norm", "run_agc", "load_data", "ResultsFile"]

# The GN paper's BN, GN, GN+WS and BCN+WS (with the micro-batch "estimated" statistics), and the rest.
NORMS = ("bn", "gn", "gn_ws", "bcn_ws_est", "ln", "in", "brn", "bin", "sn", "wn")
GROUPED = ("gn", "gn_ws", "bcn_ws_est")


@dataclass
class Setup:
    """Sizes chosen so that a run takes seconds on one CPU core (see docs/reproduction.md)."""

    train_images: int = 2048
    test_images: int = 1000
    image_size: int = 28
    epochs: int = 1
    # Images per optimizer step; each forward/backward pass (and so each normalization) sees a
    # micro-batch of it, as each GPU does in data-parallel training without synchronized norms.
    batch: int = 64
    micro_batches: tuple[int, ...] = (64, 16, 4, 2)
    norms: tuple[str, ...] = NORMS
    depth: int = 8
    widths: tuple[int, int, int] = (8, 16, 32)
    num_groups: int = 4  # GN / BCN groups: 2 to 8 channels per group at these widths
    lr: float = 0.2
    seeds: tuple[int, ...] = (0, 1)
    # AGC: NF-ResNet at a large batch and high learning rates, without and with clipping.
    agc_batch: int = 256
    agc_epochs: int = 3
    agc_lrs: tuple[float, ...] = (0.4, 1.6)
    agc_clips: tuple[float | None, ...] = (None, 0.01, 0.04, 0.16)


def load_data(setup: Setup, root=None) -> tuple[TensorDataset, TensorDataset]:
    def resize(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        if setup.image_size != x.shape[-1]:
            x = F.interpolate(x, size=setup.image_size, mode="area")
        return TensorDataset(x, y)

    return (resize(fashion_mnist("train", root, setup.train_images)),
            resize(fashion_mnist("test", root, setup.test_images)))


def _config(work: Path, batch: int, lr: float, epochs: int, seed: int, agc: float | None,
            micro_batch: int | None = None) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch, micro_batch=micro_batch, lr=lr, warmup_epochs=0.1 * epochs, weight_decay=5e-5,
                       agc_clip=agc, ema_decay=None, seed=seed, output_dir=str(work), resume="auto",
                       ckpt_every=0, log_every=1, eval_every=epochs, progress=False)


def run_norm(setup: Setup, data, norm: str, micro_batch: int, seed: int, work: Path) -> dict:
    """Train a SmallResNet with ``norm``, the normalizers seeing ``micro_batch`` images; test error."""
    torch.manual_seed(seed)
    net = SmallResNet(norm, setup.depth, setup.widths, setup.num_groups if norm in GROUPED else None)
    cfg = _config(work, setup.batch, setup.lr, setup.epochs, seed, agc=None, micro_batch=micro_batch)
    start = time.perf_counter()
    result = Trainer(net, data[0], cfg, data[1]).fit()
    return {"norm": norm, "micro_batch": micro_batch, "seed": seed, "test_error": round(result.get("eval_error", float("nan")), 2),
            "diverged": result["diverged"], "seconds": round(time.perf_counter() - start, 1)}


def run_agc(setup: Setup, data, lr: float, clip: float | None, seed: int, work: Path) -> dict:
    """Train the small NF-ResNet at ``agc_batch`` and ``lr`` with AGC ``clip`` (None: no clipping)."""
    torch.manual_seed(seed)
    cfg = _config(work, setup.agc_batch, lr, setup.agc_epochs, seed, agc=clip)
    start = time.perf_counter()
    result = Trainer(small_nf_resnet(), data[0], cfg, data[1]).fit()
    losses = [r["train_loss"] for r in read_metrics(work / "metrics.jsonl") if "train_loss" in r]
    return {"lr": lr, "clip": "none" if clip is None else clip, "seed": seed,
            "test_error": round(result.get("eval_error", float("nan")), 2), "diverged": result["diverged"],
            "final_train_loss": round(losses[-1], 4) if losses else float("nan"),
            "seconds": round(time.perf_counter() - start, 1), "losses": " ".join(f"{v:.4g}" for v in losses)}


class ResultsFile:
    """A CSV of finished runs, rewritten atomically after each: a rerun skips what is done."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = list(csv.DictReader(path.open())) if path.is_file() else []

    def done(self, **key) -> bool:
        return any(all(str(r[k]) == str(v) for k, v in key.items()) for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append({k: str(v) for k, v in row.items()})
        with atomic_open(self.path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(self.rows)

