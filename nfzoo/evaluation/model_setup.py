"""Which models to validate, and building them: names, tags, ``hf-hub:`` names, globs over
the zoo; pretrained, checkpoint-file or random weights; parameter and MAC counts.

A checkpoint of ``nfzoo.train`` carries a ``model_config`` (architecture, class count, input
channels, class names, eval preprocessing): the model is built from it. A plain state dict
carries none: its class count and input channels are the model's defaults unless given.
"""
from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from ..errors import CheckpointError, EvaluationError
from ..train.run_state import load_checkpoint, read_model_config
from ..weights.torch_files import check_torch_checkpoint
from ..weights.manifest import Checkpoint, manifest
from ..torchrun import Runtime

__all__ = ["expand_model_names", "expected_accuracy", "checkpoint_model_config", "create_model", "prepare_model",
           "count_params", "count_macs"]

HF_HUB_PREFIX = "hf-hub:"
# torch's load_state_dict message, one line per tensor whose shape differs
_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) "
                            r"from checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")


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


def checkpoint_model_config(path: Path) -> dict[str, Any] | None:
    """The ``model_config`` of an ``nfzoo.train`` checkpoint; None for any other file (a plain
    or original-release state dict, safetensors), whose problems, if any, the weights loading
    reports."""
    if Path(path).suffix == ".safetensors":
        return None
    try:
        contents = load_checkpoint(path)
    except CheckpointError:
        return None
    return read_model_config(contents) if isinstance(contents, dict) else None


def _config_overlay(config: dict[str, Any]) -> dict[str, Any]:
    """The pretrained cfg entries of a checkpoint's ``model_config``: its class names and the
    preprocessing its run validated with (at that size, whatever test size the model's cfg has)."""
    return dict(label_names=tuple(config["label_names"]), input_size=tuple(config["input_size"]),
                test_input_size=None, test_crop_pct=None, mean=tuple(config["mean"]), std=tuple(config["std"]),
                interpolation=config["interpolation"], crop_pct=config["crop_pct"], crop_mode=config["crop_mode"])


def create_model(name: str, weights: str, checkpoint: Path | None = None, seed: int = 0, *,
                 num_classes: int | None = None, in_chans: int | None = None,
                 model_config: dict[str, Any] | None = None) -> nn.Module:
    """``timm.create_model`` with ``weights`` "pretrained", "checkpoint" or "random". A checkpoint
    file goes through the model's pretrained loading (its checkpoint filter converts original
    layouts), with the class count and input channels of ``model_config`` (a checkpoint's, see
    :func:`checkpoint_model_config`) or ``num_classes``/``in_chans``, loaded as it is (no
    classifier reset, no input-conv adaptation). Random init is seeded, so that every process of
    a run builds the same model."""
    overlay: dict[str, Any] = {}
    if model_config is not None:
        num_classes, in_chans = model_config["num_classes"], model_config["in_chans"]
        overlay = _config_overlay(model_config)
    elif in_chans is not None and (cfg := get_pretrained_cfg(name)) is not None:
        overlay = {key: (in_chans, *size[1:]) for key in ("input_size", "test_input_size")
                   if (size := getattr(cfg, key))}
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = overlay["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if weights == "checkpoint":
        if checkpoint is None or not Path(checkpoint).is_file():
            raise EvaluationError(f"checkpoint file {checkpoint} does not exist")
        check_torch_checkpoint(checkpoint)  # timm's torch.load below: bounded by the file's size
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(overlay, file=str(checkpoint)))
    else:
        kwargs.update(pretrained=weights == "pretrained", pretrained_cfg_overlay=overlay or None)
    torch.manual_seed(seed)
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise _load_error(e, name, weights, checkpoint) from e


def _load_error(error: Exception, name: str, weights: str, checkpoint: Path | None) -> EvaluationError:
    mismatches = _SIZE_MISMATCH.findall(str(error))
    if mismatches:
        key, given, wanted = mismatches[0]
        more = f" (and {len(mismatches) - 1} more tensor(s))" if len(mismatches) > 1 else ""
        return EvaluationError(
            f"{checkpoint} does not fit {name}: {key} is ({given}) in the file and ({wanted}) in the model{more}; "
            "if the file was trained for another number of classes or input channels, give them with "
            "--num-classes and --in-chans")
    what = {"pretrained": " with pretrained weights", "checkpoint": f" from {checkpoint}"}.get(weights, "")
    return EvaluationError(f"cannot create {name}{what}: {type(error).__name__}: {error}")


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
