"""Training with the NFNet recipe (SGD Nesterov, AGC, warmup + cosine, label smoothing, EMA),
resumable checkpoints and ``torchrun`` data parallelism. The small-scale reproduction of the
papers' claims built on it lives beside the package (``python -m reproduction``)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import fashion_mnist
from .metrics_log import MetricsLog, read_metrics
from .steps import StepBatchSampler
from .trainer import CHECKPOINT_NAME, Trainer

__all__ = ["TrainConfig", "Trainer", "CHECKPOINT_NAME", "StepBatchSampler", "fashion_mnist",
           "MetricsLog", "read_metrics", "load_checkpoint", "save_checkpoint"]
