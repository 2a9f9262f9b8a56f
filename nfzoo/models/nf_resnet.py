"""NF-ResNets: normalizer-free pre-activation ResNets at the depths timm lacks (152, 200, 288).

Paper: Brock, De and Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (ICLR 2021, arXiv 2101.08692); architecture as in DeepMind's release
(deepmind-research/nfnets/nf_resnet.py): ``x + alpha * skip_gain * f(relu_gamma(x) / expected_std)``
with Scaled WS convs (SAME padding), a 7x7/2 stem conv without bias and a 3x3/2 SAME max-pool,
bottleneck width out/4, a strided 1x1 conv shortcut, no final conv, alpha 0.2.

Why :class:`~nfzoo.models.nfnet.NFNet` and not timm's ``NormFreeNet``: timm's ``nf_resnet*``
differ from DeepMind's NF-ResNet in ways its ``NfCfg`` cannot express (avg-pool shortcut,
symmetric max-pool padding, gamma folded into the convs, no skip gain by default). The NFNet
skeleton is DeepMind's, and NF-ResNet is exactly that skeleton with the config below, so the two
families share one block, one stem builder and one implementation of the timm interface.

timm's ``nf_resnet26/50/101`` are left alone (nfzoo never replaces a timm name that has weights,
and those names are timm's models, not DeepMind's). No NF-ResNet weights were released.
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from ._registry import register_zoo_model
from .nfnet import NFNet, NFNetCfg, create_nf_model, nf_pretrained_cfg

__all__ = ["nf_resnet_cfg"]


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


model_cfgs = {
    "nf_resnet152": nf_resnet_cfg((3, 8, 36, 3)),
    "nf_resnet200": nf_resnet_cfg((3, 24, 36, 3)),
    "nf_resnet288": nf_resnet_cfg((24, 24, 24, 24)),
}

default_cfgs = generate_default_cfgs({
    name: nf_pretrained_cfg(
        url="", input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, first_conv="stem.conv",
        paper_ids="arXiv:2101.08692", license="apache-2.0",
        notes=("No pretrained weights exist: DeepMind released none for NF-ResNets.",))
    for name in model_cfgs
})


@register_zoo_model
def nf_resnet152(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-152 (DeepMind's definition), no weights."""
    return create_nf_model("nf_resnet152", model_cfgs["nf_resnet152"], pretrained, **kwargs)


@register_zoo_model
def nf_resnet200(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-200 (DeepMind's definition), no weights."""
    return create_nf_model("nf_resnet200", model_cfgs["nf_resnet200"], pretrained, **kwargs)


@register_zoo_model
def nf_resnet288(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-ResNet-288 (DeepMind's definition), no weights."""
    return create_nf_model("nf_resnet288", model_cfgs["nf_resnet288"], pretrained, **kwargs)
