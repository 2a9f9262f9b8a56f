"""Training checkpoints that load without running code, and the random-number state a
bit-exact resume needs.

A checkpoint holds only tensors, numbers, strings, booleans, ``None`` and lists, tuples and
dicts of them, so ``torch.load(weights_only=True)`` reads it: a planted or tampered
``last.pth`` cannot run code on resume, and timm (hence ``nfzoo-validate --checkpoint``) loads
its ``model`` entry like any state dict. NumPy's generator state, the one non-tensor array, is
stored as a tensor.

Next to ``model`` a checkpoint holds ``model_config``: what a reader needs to rebuild the model
and preprocess images as the run validated them, without the training command
(:data:`MODEL_CONFIG_KEYS`; :func:`read_model_config`). The run folder holds the same dict as
``model_config.json``.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic_files import atomic_open, write_atomic
from ..errors import CheckpointError
from ..weights.torch_files import load_torch_file

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "MODEL_CONFIG_KEYS",
           "MODEL_CONFIG_FILE", "read_model_config", "write_model_config"]

# architecture: the timm model name as given to create_model, without a tag; label_names: the class
# names in index order; the rest is the eval data config the run validated with.
MODEL_CONFIG_KEYS = ("architecture", "num_classes", "in_chans", "label_names", "input_size", "mean", "std",
                     "interpolation", "crop_pct", "crop_mode")
MODEL_CONFIG_FILE = "model_config.json"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (see :mod:`nfzoo.atomic_files`)."""
    with atomic_open(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` on the CPU, without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass resume=None (--no-resume) to start fresh")
    try:
        return load_torch_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} Move it away, or start fresh with --no-resume.") from e


def read_model_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's ``model_config`` (keys :data:`MODEL_CONFIG_KEYS`), or None for a checkpoint
    without one (a plain state dict, or one written before checkpoints carried it)."""
    config = checkpoint.get("model_config")
    if config is None:
        return None
    missing = [k for k in MODEL_CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise CheckpointError(f"the checkpoint's model_config lacks {', '.join(missing)}; it was not written by "
                              "nfzoo.train (or was edited): pass the model's settings explicitly")
    return {k: config[k] for k in MODEL_CONFIG_KEYS}


def write_model_config(config: dict[str, Any], folder: str | os.PathLike) -> None:
    """Write ``config`` as ``<folder>/model_config.json``, atomically."""
    text = json.dumps({k: config[k] for k in MODEL_CONFIG_KEYS}, indent=2)
    write_atomic(Path(folder) / MODEL_CONFIG_FILE, text + "\n")


def rng_state() -> dict[str, Any]:
    """The state of every random generator training draws from (Python, NumPy, torch, CUDA),
    in types that :func:`load_checkpoint` reads."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
