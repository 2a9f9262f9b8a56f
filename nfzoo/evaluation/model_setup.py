"""Which models to validate, and building them: names, tags, ``hf-hub:`` names, globs over
the zoo; pretrained, checkpoint-file or random weights; parameter and MAC counts."""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from ..weights.manifest import Checkpoint, manifest
from ..torchrun import Runtime
from .input_error import EvaluationError

__all__ = ["expand_model_names", "expected_accuracy", "create_model", "prepare_model",
           "count_params", "count_macs"]

HF_HUB_PREFIX = "hf-hub:"


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def expand_model_names(specs: list[str]) -> list[str]:
    """Model names to validate, in order, without repeats. A glob is matched against the
    zoo's checkpoints (``<model>.<tag>`` in the manifest) by full name or by model name:
    ``nfnet_f*`` gives every NFNet checkpoint, ``*.jhu_in1k`` every JHU one."""
    out = []
    for spec in specs:
        if spec.startswith(HF_HUB_PREFIX) or not _is_glob(spec):
            out.append(spec)
            continue
        names = sorted(n for n, c in manifest().items() if fnmatch(n, spec) or fnmatch(c.model, spec))
        if not names:
            raise EvaluationError(f"--model {spec!r} matches no checkpoint of the zoo; they are: {', '.join(sorted(manifest()))}")
        out += names
    return list(dict.fromkeys(out))


def expected_accuracy(name: str) -> Checkpoint | None:
    """The manifest entry holding the published accuracy for ``name``: ``model.tag``; a bare
    model name means timm's default tag for it; ``hf-hub:repo`` the entry published there."""
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):]
        return next((c for c in manifest().values() if repo in (c.publish_repo, c.hf_hub_id)), None)
    if "." not in name:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.tag:
            return None
        name = f"{name}.{cfg.tag}"
    return manifest().get(name)


def create_model(name: str, weights: str, checkpoint: Path | None = None, seed: int = 0) -> nn.Module:
    """``timm.create_model`` with ``weights`` "pretrained", "checkpoint" or "random". A checkpoint
    file goes through the model's pretrained loading (its checkpoint filter converts original layouts);
    random init is seeded, so that every process of a run builds the same model."""
    kwargs = {}
    if weights == "checkpoint":
        if checkpoint is None or not Path(checkpoint).is_file():
            raise EvaluationError(f"checkpoint file {checkpoint} does not exist")
        kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
    elif weights == "pretrained":
        kwargs = dict(pretrained=True)
    torch.manual_seed(seed)
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        what = {"pretrained": " with pretrained weights", "checkpoint": f" from {checkpoint}"}.get(weights, "")
        raise EvaluationError(f"cannot create {name}{what}: {type(e).__name__}: {e}") from e


def prepare_model(model: nn.Module, runtime: Runtime, channels_last: bool = False) -> nn.Module:
    """In eval mode on the run's device, in the memory format the inputs will have."""
    model = model.eval().to(runtime.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on one image (half of torch's FLOP count)."""
    device = next(model.parameters()).device
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops() // 2
