"""Faster R-CNN and Mask R-CNN (torchvision) with an FPN over any zoo backbone.

With ``head_norm='gn_ws'`` (the default) the FPN, the box head (4 conv + 1 fc) and the mask
head use GroupNorm and Weight Standardization, as in the GN+WS papers' Mask R-CNN (the RPN head
and the final predictors are plain, as there); ``'gn'`` drops WS; ``None`` gives torchvision's
original heads (plain FPN, 2-fc box head, plain mask head). Nothing in the model then depends on
the batch, so it trains with one or two images per device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from .backbone import FPNBackbone, feature_backbone
from .norms import HEAD_NORMS, HeadNorm, to_group_norm

__all__ = ["faster_rcnn", "mask_rcnn"]

HEAD_CHANNELS = 256  # FPN, box-head conv and mask-head widths of the papers
BOX_FC = 1024
ROI_SIZE = 7  # torchvision's MultiScaleRoIAlign output for boxes


def faster_rcnn(
    backbone: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    trainable_layers: int | None = 3,
    head_norm: HeadNorm = "gn_ws",
    out_indices: Sequence[int] = (1, 2, 3, 4),
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with an FPN over the timm/zoo model ``backbone``.

    Args:
        num_classes: including the background class.
        pretrained_backbone: load the backbone's zoo weights (the heads start from scratch).
        trainable_layers: backbone levels trained, counted from the deepest (torchvision's
            ``trainable_backbone_layers``); 3 freezes the stem and the first stage.
        head_norm: ``'gn_ws'``, ``'gn'`` or ``None``, see the module docstring.
        out_indices: backbone feature levels fed to the FPN (timm's numbering; 1-4 are C2-C5).
        backbone_kwargs: passed to ``timm.create_model``.
        detector_kwargs: passed to torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
            ``rpn_post_nms_top_n_train``, ``box_detections_per_img`` ...).
    """
    return _build(FasterRCNN, backbone, num_classes, pretrained_backbone, trainable_layers, head_norm,
                  out_indices, backbone_kwargs, detector_kwargs)


def mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    trainable_layers: int | None = 3,
    head_norm: HeadNorm = "gn_ws",
    out_indices: Sequence[int] = (1, 2, 3, 4),
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with an FPN over ``backbone``; arguments as :func:`faster_rcnn`, and a 4-conv
    mask head normalized like the box head."""
    return _build(MaskRCNN, backbone, num_classes, pretrained_backbone, trainable_layers, head_norm,
                  out_indices, backbone_kwargs, detector_kwargs)


def _build(
    detector_cls: type[FasterRCNN],
    backbone: str,
    num_classes: int,
    pretrained: bool,
    trainable_layers: int | None,
    head_norm: HeadNorm,
    out_indices: Sequence[int],
    backbone_kwargs: dict[str, Any] | None,
    detector_kwargs: dict[str, Any],
) -> FasterRCNN:
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
    features = feature_backbone(
        backbone, out_indices, trainable_layers=trainable_layers, pretrained=pretrained,
        **(backbone_kwargs or {}))
    norm = nn.BatchNorm2d if head_norm else None  # stands for the norm; converted to GN below
    parts = dict(
        backbone=FPNBackbone(features, HEAD_CHANNELS, norm_layer=norm),
        rpn_anchor_generator=_anchor_generator(features.reductions),
        **detector_kwargs)
    if head_norm:
        parts["box_head"] = FastRCNNConvFCHead(
            (HEAD_CHANNELS, ROI_SIZE, ROI_SIZE), [HEAD_CHANNELS] * 4, [BOX_FC], norm_layer=norm)
        if issubclass(detector_cls, MaskRCNN):
            parts["mask_head"] = MaskRCNNHeads(HEAD_CHANNELS, [HEAD_CHANNELS] * 4, 1, norm_layer=norm)
        for name in ("box_head", "mask_head"):
            if name in parts:
                to_group_norm(parts[name], head_norm == "gn_ws")
        to_group_norm(parts["backbone"].fpn, head_norm == "gn_ws")
    model = detector_cls(num_classes=num_classes, **parts)
    model.register_forward_pre_hook(_require_images, with_kwargs=True)
    return model


def _anchor_generator(reductions: Sequence[int]) -> AnchorGenerator:
    """One anchor size per FPN level, 8x the level's stride (torchvision's 32..512 for strides
    4..32 plus the max-pool level), three aspect ratios."""
    strides = [*reductions, 2 * reductions[-1]]
    return AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))


def _require_images(model: GeneralizedRCNN, args: tuple, kwargs: dict) -> None:
    images = args[0] if args else kwargs.get("images")
    if images is not None and len(images) == 0:
        raise ValueError("the image list is empty: pass a list of one or more [C, H, W] tensors")

