"""NF-ResNets: DeepMind's normalizer-free pre-activation ResNets, all six depths of their release.

Paper: Brock, De and Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (ICLR 2021, arXiv 2101.08692); architecture as in DeepMind's release
(deepmind-research/nfnets/nf_resnet.py, ``NF_ResNet.variant_dict``: ResNet50, 101, 152, 200, 288,
600): ``x + alpha * skip_gain * f(relu_gamma(x) / expected_std)`` with Scaled WS convs (SAME
padding), a 7x7/2 stem conv and a 3x3/2 SAME max-pool, bottleneck width out/4, a strided 1x1 conv
shortcut, no final conv, alpha 0.2. Every WS conv has a bias, the stem's included: the release
asks for ``with_bias=False`` there, but its ``WSConv2D`` always adds one (nfnets/base.py).

Names: ``dm_nf_resnet{50,101,152,200,288,600}``, after timm's ``dm_`` prefix for DeepMind's own
definitions (``dm_nfnet_f*``). timm's ``nf_resnet26/50/101`` are a different design (and
``nf_resnet50`` has weights), so the plain ``nf_resnet*`` names stay timm's.

Why :class:`~nfzoo.models.nfnet.NFNet` and not timm's ``NormFreeNet``: timm's ``nf_resnet*``
differ from DeepMind's NF-ResNet in ways its ``NfCfg`` cannot express (avg-pool shortcut,
symmetric max-pool padding, gamma folded into the convs, no skip gain by default). The NFNet
skeleton is DeepMind's, and NF-ResNet is exactly that skeleton with the config below, so the two
families share one block, one stem builder and one implementation of the timm interface.
No NF-ResNet weights were released.
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from ._registry import register_zoo_model
from .nfnet import NFNet, NFNetCfg, create_nf_model, nf_pretrained_cfg

__all__ = ["nf_resnet_cfg", "DEPTHS"]


def nf_resnet_cfg(depths: tuple[int, int, int, int]) -> NFNetCfg:
    """DeepMind's NF-ResNet (width multiplier 4, i.e. ResNet-50's widths) at the given depths."""
    return NFNetCfg(
        depths=depths,
        widths=(256, 512, 1024, 2048),
        stem="7x7_pool",
        stem_width=64,
        bottleneck_ratio=0.25,
        group_width=None,
        extra_conv=False,
        se_ratio=None,
        avg_down=False,
        final_conv_mult=None,
        act="relu",
        drop_rate=0.0,  # the release's variant table gives none
        stochdepth_rate=0.1,  # the release's default
    )


# NF_ResNet.variant_dict of the release: stage depths per variant.
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "dm_nf_resnet50": (3, 4, 6, 3),
    "dm_nf_resnet101": (3, 4, 23, 3),
    "dm_nf_resnet152": (3, 8, 36, 3),
    "dm_nf_resnet200": (3, 24, 36, 3),
    "dm_nf_resnet288": (24, 24, 24, 24),
    "dm_nf_resnet600": (50, 50, 50, 50),
}
model_cfgs = {name: nf_resnet_cfg(depths) for name, depths in DEPTHS.items()}

default_cfgs = generate_default_cfgs({
    name: nf_pretrained_cfg(
        url="", input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, first_conv="stem.conv",
        paper_ids="arXiv:2101.08692", license="apache-2.0",
        notes=("No pretrained weights exist: DeepMind released none for NF-ResNets.",))
    for name in model_cfgs
})


@register_zoo_model
def dm_nf_resnet50(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-50 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet50", model_cfgs["dm_nf_resnet50"], pretrained, **kwargs)


@register_zoo_model
def dm_nf_resnet101(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-101 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet101", model_cfgs["dm_nf_resnet101"], pretrained, **kwargs)


@register_zoo_model
def dm_nf_resnet152(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-152 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet152", model_cfgs["dm_nf_resnet152"], pretrained, **kwargs)


@register_zoo_model
def dm_nf_resnet200(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-200 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet200", model_cfgs["dm_nf_resnet200"], pretrained, **kwargs)


@register_zoo_model
def dm_nf_resnet288(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-288 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet288", model_cfgs["dm_nf_resnet288"], pretrained, **kwargs)


@register_zoo_model
def dm_nf_resnet600(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-600 (DeepMind's definition), no weights."""
    return create_nf_model("dm_nf_resnet600", model_cfgs["dm_nf_resnet600"], pretrained, **kwargs)
