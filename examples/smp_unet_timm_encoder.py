"""segmentation_models_pytorch with a zoo encoder through its timm universal encoder (`tu-` prefix).

DOCUMENTED ONLY: segmentation_models_pytorch is not a dependency of nfzoo and is not installed
in its CI. `pip install segmentation-models-pytorch`, then run this file.
"""
import segmentation_models_pytorch as smp
import torch

import nfzoo.downstream  # registers the zoo models with timm before smp looks them up

model = smp.Unet(
    encoder_name="tu-resnet50_gn_ws",  # any zoo model: tu-resnet50_bcn_ws, tu-nfnet_f0, ...
    encoder_weights=None,              # "imagenet" loads the zoo's pretrained weights through timm
    classes=4,
)
# smp's decoders use BatchNorm; for one- or two-image batches make them batch-independent too:
nfzoo.downstream.to_group_norm(model.decoder)  # GN (+ WS) in place of every BatchNorm2d
print(model(torch.rand(1, 3, 128, 128)).shape)
