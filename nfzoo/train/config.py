"""The training configuration; defaults are the NFNet recipe (Brock et al. 2021, arXiv 2102.06171,
and DeepMind's ``nfnets/experiment_nfnets.py``; docs/training.md lists each item)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import NfzooError
from ..optim import clip_for_batch
from .precision import PRECISIONS, Precision, resolve_precision

__all__ = ["TrainConfig", "TrainConfigError"]


class TrainConfigError(NfzooError, ValueError):
    """A training setting out of its range, or settings that do not fit together (or the data)."""


@dataclass
class TrainConfig:
    """Everything a run depends on. ``lr`` is derived from ``base_lr`` by linear scaling.

    Defaults follow DeepMind's NFNet experiment (``nfnets/experiment_nfnets.py``; table in
    docs/training.md): global batch 4096, SGD with Nesterov momentum 0.9, lr 0.1 x batch / 256
    with 5 warmup epochs then cosine decay over the remaining steps, weight decay 2e-5 on conv and
    linear weights only, AGC on every parameter but the classifier's weight with the threshold the
    global batch calls for (0.01 up to 4096; :func:`nfzoo.optim.clip_for_batch`), label smoothing
    0.1, EMA of the weights with TF1-style warmup, DeepMind's bf16 scheme on GPU
    (:mod:`nfzoo.train.precision`).
    """

    epochs: int = 360
    batch_size: int = 4096  # the global batch, split evenly across processes (DeepMind: 4096)
    micro_batch: int | None = None  # images per forward/backward (gradient accumulation); norms see this many
    base_lr: float = 0.1  # lr = base_lr x global batch / 256
    lr: float | None = None  # overrides the linear scaling
    warmup_epochs: float = 5.0
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 2e-5
    # 'batch': the published threshold for the global batch; a number sets it; None: no AGC
    agc_clip: float | str | None = "batch"
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.99999  # None disables the EMA
    precision: Precision = "auto"  # auto: 'deepmind-bf16' on GPU, 'fp32' on CPU (nfzoo.train.precision)
    seed: int = 0
    output_dir: str = "runs/train"
    resume: str | None = "auto"  # 'auto': output_dir/last.pth if it exists; a path; None: start fresh
    ckpt_every: int = 500  # steps between checkpoints (also at every epoch end); 0: epoch ends only
    log_every: int = 50  # steps between training-metric lines
    eval_every: int = 1  # epochs between evaluations (0: none)
    num_workers: int = 0
    progress: bool = True
    plot: bool = True  # draw <output_dir>/metrics.png after every epoch (needs matplotlib)
    stop_on_nonfinite: bool = True  # end the run (marked diverged) at a non-finite loss

    def __post_init__(self):
        """Refuse settings no run could use, naming the field and its range."""
        def require(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise TrainConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def number(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("epochs", "batch_size", "log_every"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "an integer of at least 1")
        for name in ("ckpt_every", "eval_every", "num_workers", "seed"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, "an integer of 0 or more")
        require(self.micro_batch is None or (isinstance(self.micro_batch, int) and self.micro_batch >= 1),
                "micro_batch", "None or an integer of at least 1")
        require(number("base_lr") and self.base_lr > 0, "base_lr", "a finite number greater than 0")
        require(self.lr is None or (number("lr") and self.lr > 0), "lr", "None or a finite number greater than 0")
        for name in ("min_lr", "weight_decay", "warmup_epochs"):
            require(number(name) and getattr(self, name) >= 0, name, "a finite number of 0 or more")
        require(self.warmup_epochs < self.epochs, "warmup_epochs",
                f"shorter than the run (epochs={self.epochs}): the cosine decay follows the warmup")
        require(number("momentum") and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        require(not self.nesterov or self.momentum > 0, "momentum", "greater than 0 with Nesterov momentum")
        require(number("label_smoothing") and 0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)")
        require(self.ema_decay is None or (number("ema_decay") and 0 <= self.ema_decay < 1), "ema_decay",
                "None (no EMA) or in [0, 1)")
        require(self.agc_clip in (None, "batch") or (number("agc_clip") and self.agc_clip > 0), "agc_clip",
                "None (no AGC), 'batch' (the threshold for the global batch) or a number greater than 0")
        if self.agc_clip == "batch":
            try:
                clip_for_batch(self.batch_size)
            except ValueError as e:
                raise TrainConfigError(str(e)) from None
        require(self.precision in PRECISIONS, "precision", "one of " + ", ".join(repr(a) for a in PRECISIONS))
        require(self.resume is None or isinstance(self.resume, str), "resume", "'auto', a path or None")

    def learning_rate(self) -> float:
        """The peak learning rate: ``base_lr`` x global batch / 256 unless ``lr`` is given."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size / 256

    def agc_threshold(self) -> float | None:
        """The AGC clipping threshold for the global batch (None: no clipping)."""
        if self.agc_clip == "batch":
            return clip_for_batch(self.batch_size)
        return self.agc_clip

    def per_process_batch(self, world_size: int) -> int:
        """Each process's share of the global ``batch_size``, which ``micro_batch`` must divide."""
        if self.batch_size % world_size:
            raise TrainConfigError(f"batch_size {self.batch_size} (the global batch) does not split evenly across "
                                   f"{world_size} processes; use a multiple of {world_size}")
        per_process = self.batch_size // world_size
        if self.micro_batch is not None and per_process % self.micro_batch:
            raise TrainConfigError(f"micro_batch {self.micro_batch} does not divide each process's batch of {per_process} "
                                   f"(batch_size {self.batch_size} over {world_size} process(es)); use a divisor of it")
        return per_process

    def precision_on(self, device: torch.device) -> str:
        """``precision`` with ``auto`` decided for ``device``."""
        return resolve_precision(self.precision, device)
