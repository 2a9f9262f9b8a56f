"""The reproduction's networks: a CIFAR-style ResNet with any ``norm`` choice, and a small NF-ResNet."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.nfnet import NfCfg, NormFreeNet

from ...layers.norm_choices import get_norm

__all__ = ["SmallResNet", "small_nf_resnet"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a norm after each, ReLU, identity or 1x1-projection shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv, norm):
        super().__init__()
        self.conv1 = conv(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = norm(out_chs)
        self.conv2 = conv(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = norm(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(conv(in_chs, out_chs, 1, stride, 0, bias=False), norm(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + shortcut)


class SmallResNet(nn.Module):
    """He et al.'s CIFAR ResNet (arXiv 1512.03385, section 4.2): a 3x3 stem, three stages of
    ``(depth - 2) / 6`` basic blocks at ``widths`` (strides 1, 2, 2), global pooling, a linear
    classifier. Every conv and norm comes from the ``norm`` choice (:func:`nfzoo.layers.get_norm`).
    """

    def __init__(self, norm: str = "bn", depth: int = 8, widths: tuple[int, int, int] = (16, 32, 64),
                 num_groups: int | None = None, in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
        choice = get_norm(norm)
        conv, norm_layer = choice.conv_layer, choice.layer_factory(num_groups)
        self.conv1 = conv(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(widths[0])
        blocks, in_chs = [], widths[0]
        for i, width in enumerate(widths):
            for j in range((depth - 2) // 6):
                blocks.append(BasicBlock(in_chs, width, 2 if i and not j else 1, conv, norm_layer))
                in_chs = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_chs, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def small_nf_resnet(widths: tuple[int, ...] = (32, 64, 128), in_chans: int = 1, num_classes: int = 10) -> NormFreeNet:
    """An NF-ResNet (Brock et al. 2021, arXiv 2101.08692: scaled WS convs, alpha 0.2, gamma-scaled
    ReLU, no normalization) with one bottleneck block per stage and a 3x3 stride-2 stem; timm's
    implementation of the family at toy size."""
    cfg = NfCfg(depths=(1,) * len(widths), channels=widths, stem_type="3x3", group_size=None, bottle_ratio=0.25,
                act_layer="relu", skipinit=True)
    return NormFreeNet(cfg, in_chans=in_chans, num_classes=num_classes)

