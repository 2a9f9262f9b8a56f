"""The two experiments: normalizers vs. per-GPU batch (the GN and WS papers), and an NF-ResNet
with and without AGC vs. its batch-normalized twin over batch sizes and learning rates (the
NF-ResNet and NFNet papers)."""
from __future__ import annotations

import csv
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from nfzoo import torchrun
from nfzoo.atomic_files import atomic_open
from nfzoo.layers.ablation_norms import clamp_gates_
from nfzoo.train import TrainConfig, Trainer, fashion_mnist, read_metrics

from .networks import BATCH_DEPENDENT, SmallNFResNet, SmallResNet

__all__ = ["Setup", "NORMS", "GROUPED", "EVERY_BATCH", "build_network", "run_norm", "run_agc", "load_data",
           "ResultsFile"]

# The GN paper's BN, GN, LN and IN, the WS paper's GN+WS and BCN+WS (with the micro-batch
# "estimated" statistics), Batch Renorm, and the normalizer-free network (with AGC).
NORMS = ("bn", "gn", "gn_ws", "bcn_ws_est", "ln", "in", "brn", "nf")
GROUPED = ("gn", "gn_ws", "bcn_ws_est", "bcn_ws")
EVERY_BATCH = "all"  # the micro_batch of a batch-independent norm's runs: one run serves every column


@dataclass
class Setup:
    """The study's sizes, chosen to fit its time budget on 2 CPU cores (docs/reproduction.md
    explains the budget and each choice)."""

    train_images: int = 60_000
    test_images: int = 10_000
    epochs: int = 5
    # Images per optimizer step; the norms see micro-batches of it, as each GPU's norms do in
    # data-parallel training without synchronized statistics (gradient accumulation).
    batch: int = 128
    micro_batches: tuple[int, ...] = (32, 16, 8, 4, 2)
    norms: tuple[str, ...] = NORMS
    depth: int = 8
    widths: tuple[int, int, int] = (8, 16, 32)
    stem_stride: int = 2
    stem_pool: bool = True  # with stem_stride 2: stages at 7, 4 and 2 px, a quarter of the input, as ImageNet's
    num_groups: int = 4  # GN / BCN groups: 2 to 8 channels per group at these widths
    lr: float = 0.1
    seeds: tuple[int, ...] = (0, 1)
    # AGC: the NF-ResNet (clip None: no clipping) and its BN twin over global batch x learning rate.
    agc_batches: tuple[int, ...] = (256, 1024)
    agc_base_lrs: tuple[float, ...] = (0.4, 1.6)  # per 256 images, scaled linearly with the batch: 4x and 16x ImageNet's
    agc_clips: tuple[float | None, ...] = (None, 0.01, 0.04, 0.16)


def load_data(setup: Setup, root=None) -> tuple[TensorDataset, TensorDataset]:
    return fashion_mnist("train", root, setup.train_images), fashion_mnist("test", root, setup.test_images)


def build_network(setup: Setup, norm: str, micro_batch: int | None = None) -> nn.Module:
    """The study's ResNet with ``norm`` ('nf': its normalizer-free twin), its norms seeing
    micro-batches of ``micro_batch`` images."""
    if norm == "nf":
        return SmallNFResNet(setup.depth, setup.widths, stem_stride=setup.stem_stride, stem_pool=setup.stem_pool)
    return SmallResNet(norm, setup.depth, setup.widths, setup.num_groups if norm in GROUPED else None,
                       micro_batch=micro_batch, stem_stride=setup.stem_stride, stem_pool=setup.stem_pool)


def _fit(setup: Setup, data, net: nn.Module, work: Path, batch: int, lr: float, seed: int,
         agc: float | str | None, device: str | None) -> tuple[dict, list[float], float]:
    """Train ``net`` (resuming from ``work`` after a kill); the last evaluation, the logged
    training losses and the seconds this call took."""
    steps = setup.epochs * (len(data[0]) // batch)
    cfg = TrainConfig(epochs=setup.epochs, batch_size=batch, lr=lr, warmup_epochs=0.1 * setup.epochs,
                      weight_decay=5e-5, agc_clip=agc, ema_decay=None, seed=seed, output_dir=str(work),
                      resume="auto", ckpt_every=1000, log_every=max(1, steps // 100), eval_every=setup.epochs,
                      progress=False)
    start = time.perf_counter()
    trainer = Trainer(net, data[0], cfg, data[1], env=torchrun.start(device))
    # Batch-Instance Norm's gates stay in [0, 1]: clipped after every update, as in its paper
    trainer.optimizer.register_step_post_hook(lambda *_: clamp_gates_(net))
    result = trainer.fit()
    if "eval_error" not in result and not result["diverged"]:  # resumed from a finished run's checkpoint
        result.update(trainer.evaluate())
    losses = [r["train_loss"] for r in read_metrics(work / "metrics.jsonl") if "train_loss" in r]
    return result, losses, time.perf_counter() - start


def run_norm(setup: Setup, data, norm: str, micro_batch: int | str, seed: int, work: Path,
             device: str | None = None) -> dict:
    """Test error of the ResNet with ``norm`` trained with its norms seeing ``micro_batch`` images
    (:data:`EVERY_BATCH` for a batch-independent norm); the NF net trains with AGC."""
    torch.manual_seed(seed)
    net = build_network(setup, norm, None if micro_batch == EVERY_BATCH else int(micro_batch))
    result, _, seconds = _fit(setup, data, net, work, setup.batch, setup.lr, seed,
                              agc="batch" if norm == "nf" else None, device=device)
    return {"norm": norm, "micro_batch": micro_batch, "seed": seed,
            "test_error": round(result.get("eval_error", float("nan")), 2),
            "diverged": result["diverged"], "seconds": round(seconds, 1)}


def run_agc(setup: Setup, data, model: str, batch: int, base_lr: float, clip: float | None, seed: int,
            work: Path, device: str | None = None) -> dict:
    """The NF net ('nf', AGC ``clip``; None: none) or its BN twin ('bn') at global ``batch`` and
    learning rate ``base_lr * batch / 256``."""
    torch.manual_seed(seed)
    result, losses, seconds = _fit(setup, data, build_network(setup, model), work, batch, base_lr * batch / 256,
                                   seed, agc=clip, device=device)
    return {"model": model, "batch": batch, "base_lr": base_lr, "clip": "none" if clip is None else clip,
            "seed": seed, "test_error": round(result.get("eval_error", float("nan")), 2),
            "diverged": result["diverged"], "final_train_loss": round(losses[-1], 4) if losses else float("nan"),
            "seconds": round(seconds, 1), "losses": " ".join(f"{v:.4g}" for v in losses)}


def norm_tasks(setup: Setup) -> list[dict]:
    """Every run of the normalizer table; a batch-independent norm runs once per seed."""
    tasks = []
    for seed in setup.seeds:
        for norm in setup.norms:
            batches = setup.micro_batches if norm in BATCH_DEPENDENT else (EVERY_BATCH,)
            tasks += [dict(norm=norm, micro_batch=b, seed=seed) for b in batches]
    return tasks


def agc_tasks(setup: Setup) -> list[dict]:
    """Every run of the AGC grid: the NF net at each clip, and the BN twin unclipped."""
    return [dict(model=model, batch=batch, base_lr=lr, clip=clip, seed=seed)
            for seed in setup.seeds for batch in setup.agc_batches for lr in setup.agc_base_lrs
            for model, clip in [("bn", None)] + [("nf", c) for c in setup.agc_clips]]


class ResultsFile:
    """A CSV of finished runs, rewritten atomically after each: a rerun skips what is done."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = list(csv.DictReader(path.open())) if path.is_file() else []

    def done(self, **key) -> bool:
        key = {k: "none" if v is None else v for k, v in key.items()}
        return any(all(str(r[k]) == str(v) for k, v in key.items()) for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append({k: str(v) for k, v in row.items()})
        with atomic_open(self.path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(self.rows)


def remove_run(work: Path) -> None:
    """Delete a finished run's checkpoint folder (its result is in the CSV)."""
    shutil.rmtree(work, ignore_errors=True)
