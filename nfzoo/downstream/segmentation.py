"""DeepLabV3 (torchvision) over any zoo backbone, at output stride 16 or 8.

Output stride 16 or 8 dilates the last stages (timm's ``output_stride``), which the zoo's
ResNets and NFNets support; a backbone that cannot dilate gets a clear error. The ASPP rates follow the DeepLabV3
paper: (6, 12, 18) at stride 16, doubled at stride 8. torchvision's ``DeepLabHead`` hard-codes
batch norm (whose image-pooling branch cannot even train on one image); ``head_norm`` replaces it
with GroupNorm, and WS on its convolutions for ``'gn_ws'`` (the default), the classifier excepted.
"""
from __future__ import annotations

from typing import Any

from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from .backbone import feature_backbone
from .head_norms import HEAD_NORMS, HeadNorm, to_group_norm

__all__ = ["deeplabv3", "ATROUS_RATES"]

ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def deeplabv3(
    backbone: str,
    num_classes: int,
    *,
    output_stride: int = 16,
    pretrained_backbone: bool = False,
    trainable_layers: int | None = None,
    head_norm: HeadNorm = "gn_ws",
    backbone_kwargs: dict[str, Any] | None = None,
) -> DeepLabV3:
    """DeepLabV3 on the deepest feature level of the timm/zoo model ``backbone``.

    ``model(images)['out']`` holds per-pixel logits at the input resolution. Arguments as for
    :func:`nfzoo.downstream.faster_rcnn`; ``output_stride`` is 16 or 8.
    """
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"DeepLabV3 output_stride must be one of {tuple(ATROUS_RATES)}, got {output_stride}")
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
    features = feature_backbone(
        backbone, (-1,), names=("out",), output_stride=output_stride,
        trainable_layers=trainable_layers, pretrained=pretrained_backbone, **(backbone_kwargs or {}))
    head = DeepLabHead(features.channels[-1], num_classes, ATROUS_RATES[output_stride])
    if head_norm:
        for i in range(len(head) - 1):  # all but the classifier conv
            head[i] = to_group_norm(head[i], head_norm == "gn_ws")
    return DeepLabV3(features, head)
