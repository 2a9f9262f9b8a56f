"""``nfnet_mini``: a small NFNet for 28 px grayscale images, the zoo's demo model.

The NFNet block, stem and head of :mod:`nfzoo.models.nfnet` at toy size: three stages of one
block each (widths 64, 128, 256; group width 32; squeeze-excite; final 1x1 conv to 512). Its weights ``nfzoo_fmnist`` were trained by nfzoo's own recipe (SGD +
Nesterov, AGC, label smoothing; ``python -m nfzoo.train``) on Fashion-MNIST (Xiao et al. 2017,
arXiv 1708.07747) and ship inside the package, so that ``make demo`` validates real weights on
real images with no network; ``weights/train_demo.py`` retrains them (docs/demo.md).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from ..weights.manifest import pretrained_cfg
from ._registry import register_zoo_model
from .nfnet import NFNet, NFNetCfg, create_nf_model, nf_pretrained_cfg

__all__ = ["NFNET_MINI_CFG", "FASHION_MNIST_CLASSES"]

NFNET_MINI_CFG = NFNetCfg(depths=(1, 1, 1), widths=(64, 128, 256), stem_width=32, group_width=32,
                          drop_rate=0.0, stochdepth_rate=0.0)

# Fashion-MNIST's training-image mean and std (of pixel / 255).
_MEAN, _STD = (0.2860,), (0.3530,)
# Fashion-MNIST's classes in label order: the names the weights' cfg gives timm and transformers.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

default_cfgs = generate_default_cfgs({
    "nfnet_mini.nfzoo_fmnist": pretrained_cfg(
        "nfnet_mini.nfzoo_fmnist",
        **nf_pretrained_cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(2, 2), min_input_size=(1, 16, 16),
                            mean=_MEAN, std=_STD, label_names=FASHION_MNIST_CLASSES)),
})


@register_zoo_model
def nfnet_mini(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """A small NFNet for 28 px grayscale images; weights ``nfzoo_fmnist`` (Fashion-MNIST)."""
    return create_nf_model("nfnet_mini", NFNET_MINI_CFG, pretrained, **kwargs)
