"""The EMA of the weights with DeepMind's TF1-style warmup of the decay.

DeepMind's NFNet experiment (``nfnets/experiment.py``, ``which_ema`` defaulting to ``tf1_ema`` in
``nfnets/utils.py``) averages after every optimizer step, at global step ``t`` = 0, 1, 2, ...::

    decay_t = min(decay, (1 + t) / (10 + t))
    ema <- decay_t * ema + (1 - decay_t) * params

with ``decay = 0.99999``. The cap binds only after about 900k steps, so for a 360-epoch F0 run at
batch 4096 (112.6k steps) the warmup formula governs the whole run. A constant 0.99999 would
instead leave about a third of the initial weights in the average at the end of such a run.
"""
from __future__ import annotations

from timm.utils import ModelEmaV3

__all__ = ["TF1WarmupEma", "tf1_ema_decay"]


def tf1_ema_decay(step: int, decay: float) -> float:
    """The decay applied by the ``step``-th update (1-based: the first optimizer step is 1, which
    DeepMind counts as global step 0)."""
    t = step - 1
    return min(decay, (1.0 + t) / (10.0 + t))


class TF1WarmupEma(ModelEmaV3):
    """timm's :class:`~timm.utils.ModelEmaV3` (foreach updates, bf16 stochastic rounding) with
    :func:`tf1_ema_decay` in place of timm's own warmup. ``update(model, step=n)`` after the
    ``n``-th optimizer step; without ``step`` the plain ``decay`` is used."""

    def get_decay(self, step: int | None = None) -> float:
        return self.decay if step is None else tf1_ema_decay(step, self.decay)
