"""A timm ``features_only`` model as a torchvision backbone, optionally with an FPN on top.

Any model timm can build with ``features_only=True`` works, the zoo's included
(``import nfzoo`` registers them). The feature extractor is timm's own; this module adds what
torchvision's detection and segmentation models expect of a backbone: named feature maps, an
``out_channels`` attribute, frozen early stages (torchvision's ``trainable_layers``) and a
dilated variant for dense prediction (timm's ``output_stride``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import timm
import torch
import torch.nn as nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ["FeatureBackbone", "FPNBackbone", "feature_backbone", "fpn_backbone", "OUTPUT_STRIDES"]

OUTPUT_STRIDES = (8, 16, 32)


class FeatureBackbone(nn.Module):
    """A timm feature extractor whose feature maps come out as an ``OrderedDict`` under ``names``.

    Frozen modules (see :func:`feature_backbone`) stay in eval mode when the model trains, so
    that any running statistics they hold stay as they were loaded, as torchvision's frozen
    batch norm does.
    """

    def __init__(self, body: nn.Module, names: Sequence[str], frozen: Sequence[str] = ()):
        super().__init__()
        if len(names) != len(body.feature_info.out_indices):
            raise ValueError(f"{len(names)} names for {len(body.feature_info.out_indices)} feature maps")
        self.body = body
        self.names = tuple(names)
        self.frozen = tuple(frozen)
        self.channels = tuple(body.feature_info.channels())
        self.reductions = tuple(body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.body(x)))

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        for name in self.frozen:
            self.body.get_submodule(name).eval()
        return self


class FPNBackbone(nn.Module):
    """torchvision's ``BackboneWithFPN`` over a :class:`FeatureBackbone`: maps ``'0'``, ``'1'``, ...
    (and ``'pool'`` with the default max-pool level), each with ``out_channels`` channels."""

    def __init__(
        self,
        features: FeatureBackbone,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        self.features = features
        self.fpn = FeaturePyramidNetwork(
            list(features.channels), out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
            norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.features(x))


def feature_backbone(
    model_name: str,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    *,
    names: Sequence[str] | None = None,
    output_stride: int = 32,
    trainable_layers: int | None = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> FeatureBackbone:
    """Build ``timm.create_model(model_name, features_only=True, ...)`` as a :class:`FeatureBackbone`.

    Args:
        out_indices: timm feature levels to return; level 0 is the stem, 1-4 the stages of a
            ResNet-like network (reductions 4, 8, 16, 32), as torchvision's C2-C5.
        names: keys of the returned maps; ``'0'``, ``'1'``, ... by default.
        output_stride: 8 or 16 dilate the last stages instead of striding them (for dense
            prediction), where the architecture supports it.
        trainable_layers: how many levels, counted from the deepest, are trained, as
            torchvision's ``trainable_backbone_layers``: with 5 levels (stem + 4 stages), 3 freezes
            the stem and the first stage, 5 trains everything, 0 freezes the whole backbone.
            ``None`` trains everything.
        pretrained: load the zoo's (timm's) pretrained weights.
        model_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``norm`` ...).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if output_stride != 32:
        model_kwargs["output_stride"] = output_stride
    try:
        body = timm.create_model(
            model_name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices),
            **model_kwargs)
    except IndexError as e:
        raise ValueError(
            f"{model_name} cannot give feature levels {tuple(out_indices)}: its levels are "
            f"0..{len(_levels(model_name)) - 1} with reductions {_levels(model_name)}") from e
    except (TypeError, AssertionError) as e:
        if "output_stride" not in model_kwargs:
            raise
        raise ValueError(_no_dilation(model_name, output_stride)) from e
    if body.feature_info.info[-1]["reduction"] > output_stride:  # output_stride silently ignored
        raise ValueError(_no_dilation(model_name, output_stride))
    frozen = _frozen_modules(body, trainable_layers) if trainable_layers is not None else ()
    for name in frozen:
        body.get_submodule(name).requires_grad_(False)
    if names is None:
        names = [str(i) for i in range(len(body.feature_info.out_indices))]
    return FeatureBackbone(body, names, frozen)


def fpn_backbone(
    model_name: str,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    *,
    out_channels: int = 256,
    norm_layer: Callable[[int], nn.Module] | None = None,
    **kwargs: Any,
) -> FPNBackbone:
    """An FPN over ``model_name``'s feature levels; ``kwargs`` as for :func:`feature_backbone`."""
    return FPNBackbone(feature_backbone(model_name, out_indices, **kwargs), out_channels, norm_layer=norm_layer)


def _levels(model_name: str) -> list[int]:
    """The reductions of ``model_name``'s feature levels (for error messages)."""
    return timm.create_model(model_name, features_only=True).feature_info.reduction()


def _no_dilation(model_name: str, output_stride: int) -> str:
    return (f"{model_name} does not support dilation, so output_stride={output_stride} cannot be "
            f"reached; use output_stride=32 or a backbone that supports it (e.g. the ResNets, NFNets)")


def _frozen_modules(body: nn.Module, trainable_layers: int) -> list[str]:
    """Names of the feature extractor's top-level modules up to (and including) the last
    frozen level, in forward order."""
    levels = body.feature_info.info
    if not 0 <= trainable_layers <= len(levels):
        raise ValueError(f"trainable_layers must be in 0..{len(levels)}, got {trainable_layers}")
    if trainable_layers == len(levels):
        return []
    children = [name for name, _ in body.named_children()]
    last_frozen = levels[len(levels) - 1 - trainable_layers]["module"].replace(".", "_")
    if last_frozen not in children:
        raise ValueError(
            f"cannot freeze up to {last_frozen!r}: {type(body).__name__} has no such top-level module; "
            f"pass trainable_layers=None and freeze parameters yourself")
    return children[: children.index(last_frozen) + 1]
