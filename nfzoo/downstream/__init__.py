"""Zoo backbones in torchvision's detection and segmentation models, and what fine-tuning them
with one or two images per device needs (docs/downstream.md)."""
from .backbone import FeatureBackbone, FPNBackbone, feature_backbone, fpn_backbone
from .detection import faster_rcnn, mask_rcnn
from .estimated_bn import use_estimated_batch_stats
from .finetune import create_optimizer
from .head_norms import to_group_norm
from .segmentation import deeplabv3

__all__ = [
    "FeatureBackbone", "FPNBackbone", "feature_backbone", "fpn_backbone",
    "faster_rcnn", "mask_rcnn", "deeplabv3", "to_group_norm", "use_estimated_batch_stats", "create_optimizer",
]
