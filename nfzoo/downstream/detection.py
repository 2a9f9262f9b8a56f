"""Faster R-CNN and Mask R-CNN (torchvision) with an FPN over any zoo backbone.

The heads are those of the GN paper's Mask R-CNN (torchvision's ``*_v2`` models): a box head of
4 convolutions and 1 fully connected layer, a 4-convolution mask head. With ``head_norm='gn_ws'``
(the default) the FPN and these heads use GroupNorm and Weight Standardization, as in the GN+WS
papers (the RPN head and the final predictors are plain, as there); ``'gn'`` drops WS; ``None``
drops normalization. With a zoo backbone nothing in the model then depends on the batch, so it
trains with one or two images per device.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .backbone import FPNBackbone, feature_backbone
from .head_norms import HEAD_NORMS, HeadNorm, to_group_norm

__all__ = ["faster_rcnn", "mask_rcnn"]

ROI_SIZE = 7  # torchvision's MultiScaleRoIAlign output for boxes


def faster_rcnn(
    backbone: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    trainable_layers: int | None = 3,
    head_norm: HeadNorm = "gn_ws",
    out_indices: Sequence[int] = (1, 2, 3, 4),
    head_channels: int = 256,
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
        head_channels: width of the FPN and of the box- and mask-head convolutions (256 in the
            papers); the box head's fully connected layer is 4x as wide (1024).
        backbone_kwargs: passed to ``timm.create_model``.
        detector_kwargs: passed to torchvision's ``FasterRCNN`` (``min_size``, ``max_size``,
            ``rpn_post_nms_top_n_train``, ``box_detections_per_img`` ...).
    """
    return _build(FasterRCNN, backbone, num_classes, pretrained_backbone, trainable_layers, head_norm,
                  out_indices, head_channels, backbone_kwargs, detector_kwargs)


def mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    trainable_layers: int | None = 3,
    head_norm: HeadNorm = "gn_ws",
    out_indices: Sequence[int] = (1, 2, 3, 4),
    head_channels: int = 256,
    backbone_kwargs: dict[str, Any] | None = None,
    **detector_kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with an FPN over ``backbone``; arguments as :func:`faster_rcnn`, and a 4-conv
    mask head normalized like the box head."""
    return _build(MaskRCNN, backbone, num_classes, pretrained_backbone, trainable_layers, head_norm,
                  out_indices, head_channels, backbone_kwargs, detector_kwargs)


def _build(
    detector_cls: type[FasterRCNN],
    backbone: str,
    num_classes: int,
    pretrained: bool,
    trainable_layers: int | None,
    head_norm: HeadNorm,
    out_indices: Sequence[int],
    head_channels: int,
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
        backbone=FPNBackbone(features, head_channels, norm_layer=norm),
        rpn_anchor_generator=_anchor_generator(features.reductions),
        box_head=FastRCNNConvFCHead(
            (head_channels, ROI_SIZE, ROI_SIZE), [head_channels] * 4, [4 * head_channels], norm_layer=norm),
        box_predictor=FastRCNNPredictor(4 * head_channels, num_classes))
    if issubclass(detector_cls, MaskRCNN):
        parts["mask_head"] = MaskRCNNHeads(head_channels, [head_channels] * 4, 1, norm_layer=norm)
        parts["mask_predictor"] = MaskRCNNPredictor(head_channels, head_channels, num_classes)
    if head_norm:
        for name in ("box_head", "mask_head"):
            if name in parts:
                to_group_norm(parts[name], head_norm == "gn_ws")
        to_group_norm(parts["backbone"].fpn, head_norm == "gn_ws")
    model = detector_cls(**parts, **detector_kwargs)
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

