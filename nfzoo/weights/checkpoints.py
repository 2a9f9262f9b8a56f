"""Reading PyTorch checkpoints safely (the fit check: :mod:`nfzoo.weights.state_dict_fit`)."""
from __future__ import annotations

import os
import pickle

import torch
from timm.models import load_state_dict

from .errors import CheckpointError
from .files import check_readable

__all__ = ["load_torch_state_dict"]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pth.tar``/``.safetensors`` file, loaded without running code.

    ``torch.load(weights_only=True)`` through timm's ``load_state_dict``: a ``state_dict``
    or ``model`` entry is unwrapped and DataParallel's ``module.`` prefix is dropped.
    """
    check_readable(path)
    try:
        state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True); it is not a plain PyTorch "
            f"state dict (or it is damaged): {str(e).splitlines()[0]}") from e
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e}); "
            "it is truncated or not a checkpoint.") from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors.")
    return state_dict
