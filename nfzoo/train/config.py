"""The training configuration; defaults are the NFNet recipe (Brock et al. 2021, arXiv 2102.06171,
and DeepMind's ``nfnets/experiment_nfnets.py``; docs/training.md lists each item)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..optim import clip_for_batch

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a run depends on. ``lr`` is derived from ``base_lr`` by linear scaling.

    Defaults follow DeepMind's NFNet experiment (``nfnets/experiment_nfnets.py``; table in
    docs/training.md): global batch 4096, SGD with Nesterov momentum 0.9, lr 0.1 x batch / 256
    with 5 warmup epochs then cosine decay over the remaining steps, weight decay 2e-5 on conv and
    linear weights only, AGC on every parameter but the classifier's weight with the threshold the
    global batch calls for (0.01 up to 4096; :func:`nfzoo.optim.clip_for_batch`), label smoothing
    0.1, EMA of the weights with TF1-style warmup, bf16 autocast on GPU.
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
    # 'batch': the published threshold for the global batch; a number sets it; None or 0: no AGC
    agc_clip: float | str | None = "batch"
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.99999  # None disables the EMA
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on GPU (as DeepMind), none on CPU
    seed: int = 0
    output_dir: str = "runs/train"
    resume: str | None = "auto"  # 'auto': output_dir/last.pth if it exists; a path; None: start fresh
    ckpt_every: int = 500  # steps between checkpoints (also at every epoch end); 0: epoch ends only
    log_every: int = 50  # steps between training-metric lines
    eval_every: int = 1  # epochs between evaluations (0: none)
    num_workers: int = 0
    progress: bool = True
    stop_on_nonfinite: bool = True  # end the run (marked diverged) at a non-finite loss

    def __post_init__(self):
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'auto', 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
        if isinstance(self.agc_clip, str) and self.agc_clip != "batch":
            raise ValueError(f"agc_clip must be a number, None or 'batch', got {self.agc_clip!r}")

    def learning_rate(self) -> float:
        """The peak learning rate: ``base_lr`` x global batch / 256 unless ``lr`` is given."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.batch_size / 256

    def agc_threshold(self) -> float | None:
        """The AGC clipping threshold for the global batch (None: no clipping)."""
        if self.agc_clip == "batch":
            return clip_for_batch(self.batch_size)
        return self.agc_clip or None

    def per_process_batch(self, world_size: int) -> int:
        """Each process's share of the global ``batch_size``."""
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) does not split evenly across "
                             f"{world_size} processes; use a multiple of {world_size}")
        return self.batch_size // world_size

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: full precision)."""
        amp = ("bf16" if device.type == "cuda" else "none") if self.amp == "auto" else self.amp
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
