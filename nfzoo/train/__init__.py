"""Training with the NFNet recipe (SGD Nesterov, AGC, warmup + cosine, label smoothing, EMA),
resumable checkpoints and ``torchrun`` data parallelism. The small-scale reproduction of the
papers' claims built on it lives beside the package (``python -m reproduction``)."""
from .config import TrainConfig
from .data import fashion_mnist
from .metrics_log import MetricsLog, read_metrics
from .run_state import load_checkpoint, read_model_config, save_checkpoint
from .steps import StepBatchSampler
from .trainer import CHECKPOINT_NAME, Trainer

__all__ = ["TrainConfig", "Trainer", "CHECKPOINT_NAME", "StepBatchSampler", "fashion_mnist",
           "MetricsLog", "read_metrics", "load_checkpoint", "save_checkpoint", "read_model_config"]
