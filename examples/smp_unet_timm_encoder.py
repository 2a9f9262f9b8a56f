"""segmentation_models_pytorch with a zoo encoder through its timm universal encoder (`tu-` prefix).

`pip install segmentation-models-pytorch` (nfzoo's test extra installs it and runs this file),
then `python examples/smp_unet_timm_encoder.py`. smp's decoders use BatchNorm, which breaks at
one image per batch (DeepLabV3+'s image-pooling branch sees a single value per channel) and is
unreliable at two; `nfzoo.downstream.to_group_norm` makes them batch-independent: GroupNorm
(32 groups, or 16 channels per group where 32 does not divide the width) and WS convs.
"""
import segmentation_models_pytorch as smp
import torch

import nfzoo.downstream  # registers the zoo models with timm before smp looks them up


def build(arch: str, **kwargs) -> torch.nn.Module:
    model = getattr(smp, arch)(
        encoder_name="tu-resnet50_gn_ws",  # any zoo model: tu-resnet50_bcn_ws, tu-nfnet_f0, ...
        encoder_weights=None,              # "imagenet" loads the zoo's pretrained weights through timm
        classes=4, **kwargs)
    nfzoo.downstream.to_group_norm(model.decoder)  # GN (+ WS) in place of every BatchNorm2d
    return model


def main() -> None:
    images = torch.rand(1, 3, 128, 128)  # one image per batch, as in fine-tuning on one GPU
    for arch, kwargs in (("Unet", {}), ("Unet", dict(decoder_channels=(256, 128, 64, 48, 16))), ("DeepLabV3Plus", {})):
        model = build(arch, **kwargs).train()
        masks = model(images)
        masks.mean().backward()
        print(f"{arch}{' ' + str(kwargs) if kwargs else ''}: {tuple(masks.shape)}")


if __name__ == "__main__":
    main()
