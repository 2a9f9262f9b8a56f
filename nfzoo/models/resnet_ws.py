"""ResNet and ResNeXt with Weight Standardization and GroupNorm (GN+WS) or Batch-Channel
Normalization (BCN+WS), Qiao et al., "Micro-Batch Training with Batch-Channel Normalization
and Weight Standardization" (arXiv 1903.10520), with the authors' ImageNet weights.

The network is timm's :class:`~timm.models.resnet.ResNet` in torchvision's v1.5 layout (stride
on the 3x3 conv, torchvision's module names, so the authors' checkpoints load key for key),
with every convolution weight-standardized and the norm chosen by name from
:data:`nfzoo.layers.NORMS` (``'gn_ws'``, ``'bcn_ws'``, ``'bcn_ws_est'``, ``'bn'``, ``'gn'`` ...).
Reusing timm's class gives the whole timm interface (features_only, forward_intermediates,
output_stride for dilated backbones, stochastic depth, gradient checkpointing).

Numerics as released: WS divides by ``unbiased_std + 1e-5`` with GN, by
``sqrt(unbiased_var + 1e-5)`` with BCN; GN and BCN use 32 groups; BCN's group affine is per
group; BCN+WS blocks start with the last norm's weight at zero (timm's ``zero_init_last``), GN+WS
blocks do not, as in each release.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from timm.models.resnet import Bottleneck, ResNet

from ..layers.norm_by_name import NORMS, NormChoice, get_norm
from ..optim.param_groups import no_weight_decay_names
from ..weights import manifest, pretrained_cfg
from ..weights.loading import unwrap_state_dict
from ..weights.state_dict_fit import check_fits
from ._arguments import check_model_args
from ._builder import build_zoo_model
from ._registry import register_zoo_model

__all__ = ["ResNetWS", "ResNetWSCfg", "build_resnet_ws", "checkpoint_filter_fn", "ARCHS"]


@dataclass(frozen=True)
class ResNetWSCfg:
    """One network: bottleneck blocks per stage, ResNeXt cardinality and base width, norm name."""

    depths: tuple[int, int, int, int]
    cardinality: int = 1
    base_width: int = 64
    norm: str = "gn_ws"


ARCHS: dict[str, ResNetWSCfg] = {
    "resnet50": ResNetWSCfg(depths=(3, 4, 6, 3)),
    "resnet101": ResNetWSCfg(depths=(3, 4, 23, 3)),
    "resnext50_32x4d": ResNetWSCfg(depths=(3, 4, 6, 3), cardinality=32, base_width=4),
    "resnext101_32x4d": ResNetWSCfg(depths=(3, 4, 23, 3), cardinality=32, base_width=4),
}

# The registered models: those with the authors' weights.
MODELS = (
    "resnet50_gn_ws", "resnet101_gn_ws", "resnext50_32x4d_gn_ws", "resnext101_32x4d_gn_ws",
    "resnet50_bcn_ws", "resnet101_bcn_ws", "resnext50_32x4d_bcn_ws",
)
_STAGE_PLANES = (64, 128, 256, 512)


def _norm_channels(cfg: ResNetWSCfg) -> Iterator[tuple[str, int]]:
    """(layer names, channels) of every norm layer the network has."""
    yield "bn1", 64
    for i, planes in enumerate(_STAGE_PLANES, 1):
        width = int(planes * cfg.base_width / 64) * cfg.cardinality
        yield f"layer{i}.*.bn1 and bn2", width
        yield f"layer{i}.*.bn3 and downsample.1", planes * Bottleneck.expansion


def _check_groups(cfg: ResNetWSCfg, choice: NormChoice, num_groups: int | None) -> None:
    groups = num_groups or choice.num_groups
    if groups is None:
        return
    for name, channels in _norm_channels(cfg):
        if channels % groups:
            raise ValueError(
                f"norm {cfg.norm!r} with {groups} groups cannot normalize layer {name}: its {channels} "
                f"channels are not divisible by {groups}; choose norm_groups dividing every width")


def _standardize_convs(module: nn.Module, conv_layer: Callable[..., nn.Conv2d]) -> None:
    """Replace every plain nn.Conv2d under ``module`` by ``conv_layer``, keeping its parameters."""
    for name, child in module.named_children():
        if type(child) is not nn.Conv2d:
            _standardize_convs(child, conv_layer)
            continue
        conv = conv_layer(
            child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
            padding=child.padding, dilation=child.dilation, groups=child.groups, bias=False,
            device=child.weight.device)
        if parametrize.is_parametrized(conv, "weight"):  # weight norm: set through its right_inverse
            with torch.no_grad():
                conv.weight = child.weight.detach()
        else:
            conv.weight = child.weight
        conv.bias = child.bias
        setattr(module, name, conv)


# Whether each block's last norm weight starts at zero, as each release initialises it: the GN+WS
# release (pytorch-classification, models/imagenet/resnet.py and resnext.py) keeps
# ``zero_init_residual=False``; the BCN+WS release (Batch-Channel-Normalization,
# imagenet/models/imagenet/resnet.py and resnext.py) sets it to True. Other norms: timm's default.
_ZERO_INIT_LAST = {"gn_ws": False, "bcn_ws": True}


class ResNetWS(ResNet):
    """timm's ResNet (v1.5, torchvision layout) with the convolutions and norms of a ``norm`` choice.

    Args:
        cfg: the network (depths, cardinality, base width, norm name).
        norm_groups: group count of a grouped norm, overriding the choice's default (32).
        **kwargs: timm ResNet's arguments (num_classes, in_chans, output_stride, drop_rate,
            drop_path_rate, zero_init_last, ...).
    """

    def __init__(self, cfg: ResNetWSCfg, norm_groups: int | None = None, **kwargs: Any):
        check_model_args(type(self).__name__, kwargs)
        choice = get_norm(cfg.norm)
        _check_groups(cfg, choice, norm_groups)
        kwargs.setdefault("zero_init_last", _ZERO_INIT_LAST.get(cfg.norm, True))
        super().__init__(
            Bottleneck, cfg.depths, cardinality=cfg.cardinality, base_width=cfg.base_width,
            norm_layer=choice.layer_factory(norm_groups), **kwargs)
        if choice.conv_layer is not nn.Conv2d:
            _standardize_convs(self, choice.conv_layer)
        self.cfg = cfg

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Every parameter but the conv and linear weights (BCN's per-group weights are 3-D, so
        timm's own rule for 1-D parameters would miss them)."""
        return no_weight_decay_names(self)


# ---------------------------------------------------------------- checkpoints

_NORM_KINDS = {"bcn": "Batch-Channel Norm (BCN)", "bn": "BatchNorm", "gn": "GroupNorm"}
_OPTIONAL_KEYS = ("num_batches_tracked", "estbn_moving_speed")  # a checkpoint may lack them


def _norm_kind(keys) -> str:
    if any(".pbn." in k for k in keys):
        return "bcn"
    return "bn" if "bn1.running_mean" in keys else "gn"


def _describe(state_dict: dict[str, torch.Tensor]) -> str:
    depths = tuple(
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    text = f"blocks per stage {depths}"
    conv2 = state_dict.get("layer1.0.conv2.weight")
    if conv2 is not None:
        text += f", layer1 3x3 conv {conv2.shape[0]} channels in {conv2.shape[0] // conv2.shape[1]} groups"
    return text


def _rename(key: str) -> str:
    # OpenMMLab's mirrors name GroupNorm layers gn1..gn3.
    return re.sub(r"(^|\.)gn(\d)\.", r"\1bn\2.", key)


def _to_model_keys(checkpoint: dict[str, Any], model: ResNetWS) -> dict[str, torch.Tensor]:
    """The authors' GN+WS / BCN+WS files (``module.`` prefix, BCN's ``pbn`` and per-group
    affine), OpenMMLab's GN+WS mirrors (``{'state_dict': ...}``, ``gnX`` names) or our own
    state dicts, under this model's keys; a clear error for a checkpoint of another norm.
    """
    state_dict = {_rename(k): v for k, v in unwrap_state_dict(checkpoint).items()}
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    have, want = _norm_kind(state_dict), _norm_kind(model.state_dict())
    if have != want:
        raise ValueError(
            f"the checkpoint has {_NORM_KINDS[have]} layers but this {arch} model uses {_NORM_KINDS[want]}; "
            f"build the model with the checkpoint's norm (e.g. build_resnet_ws(arch, norm=...) or the matching "
            f"*_{'bcn_ws' if have == 'bcn' else 'gn_ws'} model)")
    return state_dict


# What the fit check of this family adds (nfzoo.weights.state_dict_fit.check_fits)
_FIT_OPTIONS = dict(optional=_OPTIONAL_KEYS, describe=_describe)


def checkpoint_filter_fn(checkpoint: dict[str, Any], model: ResNetWS) -> dict[str, torch.Tensor]:
    """A checkpoint of this family (see :func:`_to_model_keys`) as this model's state dict, checked
    to fit it (a clear error for another architecture or norm). A pretrained load runs the same
    mapping and one fit check, in the zoo's builder."""
    state_dict = _to_model_keys(checkpoint, model)
    check_fits(state_dict, model, "the checkpoint", skip=[model.get_classifier(name_only=True)], **_FIT_OPTIONS)
    return state_dict


# ---------------------------------------------------------------- entry points

def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv="conv1", classifier="fc", **kwargs)


default_cfgs = generate_default_cfgs({
    name: pretrained_cfg(name, **_cfg()) for name, ckpt in manifest().items() if ckpt.model in MODELS})


def build_resnet_ws(arch: str = "resnet50", norm: str = "gn_ws", pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """Build ``arch`` (``'resnet50'``, ``'resnet101'``, ``'resnext50_32x4d'``, ``'resnext101_32x4d'``)
    with any ``norm`` of :data:`nfzoo.layers.NORMS`; pretrained weights exist for the registered
    ``<arch>_gn_ws`` and ``<arch>_bcn_ws`` models. ``kwargs`` go to :class:`ResNetWS` and timm's builder.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    get_norm(norm)
    variant = f"{arch}_{norm}"
    if variant not in MODELS:
        if pretrained:
            raise ValueError(
                f"no pretrained weights for {arch} with norm {norm!r}; weights exist for "
                f"{sorted(m for m in MODELS if m.startswith(arch + '_'))}")
        kwargs.setdefault("pretrained_cfg", _cfg())
    return build_zoo_model(
        ResNetWS, variant, pretrained, checkpoint_filter=_to_model_keys, fit_options=_FIT_OPTIONS,
        model_cfg=replace(ARCHS[arch], norm=norm), **kwargs)


def _build_registered(arch: str, norm: str, pretrained: bool, kwargs: dict[str, Any]) -> ResNetWS:
    if "norm" in kwargs:
        raise ValueError(
            f"{arch}_{norm} is {arch} with norm {norm!r}; its name fixes the norm, so norm={kwargs['norm']!r} "
            f"cannot be given. For another norm, build_resnet_ws({arch!r}, norm=...) takes one of {sorted(NORMS)}")
    return build_resnet_ws(arch, norm, pretrained, **kwargs)


@register_zoo_model
def resnet50_gn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNet-50 v1.5, GroupNorm (32 groups) + WS; authors' weights."""
    return _build_registered("resnet50", "gn_ws", pretrained, kwargs)


@register_zoo_model
def resnet101_gn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNet-101 v1.5, GroupNorm (32 groups) + WS; authors' weights."""
    return _build_registered("resnet101", "gn_ws", pretrained, kwargs)


@register_zoo_model
def resnext50_32x4d_gn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNeXt-50 32x4d, GroupNorm (32 groups) + WS; authors' weights."""
    return _build_registered("resnext50_32x4d", "gn_ws", pretrained, kwargs)


@register_zoo_model
def resnext101_32x4d_gn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNeXt-101 32x4d, GroupNorm (32 groups) + WS; authors' weights."""
    return _build_registered("resnext101_32x4d", "gn_ws", pretrained, kwargs)


@register_zoo_model
def resnet50_bcn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNet-50 v1.5, Batch-Channel Norm + WS (authors' weights)."""
    return _build_registered("resnet50", "bcn_ws", pretrained, kwargs)


@register_zoo_model
def resnet101_bcn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNet-101 v1.5, Batch-Channel Norm + WS (authors' weights)."""
    return _build_registered("resnet101", "bcn_ws", pretrained, kwargs)


@register_zoo_model
def resnext50_32x4d_bcn_ws(pretrained: bool = False, **kwargs: Any) -> ResNetWS:
    """ResNeXt-50 32x4d, Batch-Channel Norm + WS (authors' weights)."""
    return _build_registered("resnext50_32x4d", "bcn_ws", pretrained, kwargs)
