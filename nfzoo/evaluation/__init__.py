"""ImageNet validation harness: data sources, eval preprocessing from the pretrained cfg, a
distributed evaluation loop, reports and plots, and the ``nfzoo-validate`` command."""
from ..errors import EvaluationError
from .loop import EvalOptions, EvalResult, evaluate
from .preprocess import eval_data_config, eval_transform
from .sources import open_source

__all__ = ["EvaluationError", "EvalOptions", "EvalResult", "evaluate", "eval_data_config", "eval_transform", "open_source"]
