"""The reproduction's networks: a small ResNet with any ``norm`` choice, its normalizer-free
twin built from nfzoo's NF-ResNet block, and the micro-batching of batch-dependent norms."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn

from nfzoo.layers import GammaAct, ScaledStdConv2d, get_norm
from nfzoo.models.nfnet import NFBlock, NFNetCfg, expected_std_betas

__all__ = ["MicroBatchNorm", "SmallResNet", "SmallNFResNet", "BATCH_DEPENDENT", "BCN_MOVING_SPEED", "norm_factory"]

# The norm choices whose output for one image depends on the other images of its batch (as the
# study builds them: norm_factory). The rest normalize each image alone, so how a batch is split
# cannot change what they compute.
BATCH_DEPENDENT = frozenset({"bn", "bcn_ws", "bcn_ws_est", "brn", "bin", "sn"})
# The moving speed of BCN's estimated statistics in the study: they follow the micro-batches'
# statistics (the library's default, 0, freezes them at their initial values).
BCN_MOVING_SPEED = 0.01


def norm_factory(norm: str, num_groups: int | None = None) -> Callable[[int], nn.Module]:
    """``norm``'s layer factory (:func:`nfzoo.layers.get_norm`) as the study uses it: BCN with
    estimated statistics moves them at :data:`BCN_MOVING_SPEED`."""
    factory = get_norm(norm).layer_factory(num_groups)
    return partial(factory, moving_speed=BCN_MOVING_SPEED) if norm == "bcn_ws_est" else factory


class MicroBatchNorm(nn.Module):
    """``norm`` applied to consecutive micro-batches of ``micro_batch`` images, in order.

    In a network whose only cross-image operations are its norms, one forward/backward of a
    batch through these wrappers computes exactly what gradient accumulation over its
    micro-batches computes (each micro-batch alone through the plain network): the same outputs,
    the same summed gradients, and the same running statistics, updated once per micro-batch in
    the same order. The convolutions meanwhile run on the whole batch, so a study of per-GPU
    batches of 2 costs little more than one of 32.
    """

    def __init__(self, norm: nn.Module, micro_batch: int):
        super().__init__()
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive number of images, got {micro_batch}")
        self.norm, self.micro_batch = norm, micro_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= self.micro_batch:
            return self.norm(x)
        return torch.cat([self.norm(chunk) for chunk in x.split(self.micro_batch)])

    def extra_repr(self) -> str:
        return f"micro_batch={self.micro_batch}"


def _micro_batched(norm_layer, num_channels: int, micro_batch: int) -> nn.Module:
    """``norm_layer(num_channels)`` seeing micro-batches of ``micro_batch`` images: through its own
    ``micro_batch`` where it has one (nfzoo's batch-dependent norms, vectorized), else through
    :class:`MicroBatchNorm`."""
    layer = norm_layer(num_channels)
    native = [m for m in layer.modules() if hasattr(m, "micro_batch")]
    for module in native:
        module.micro_batch = micro_batch
    return layer if native else MicroBatchNorm(layer, micro_batch)


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


def _stem_pool(enabled: bool) -> nn.Module:
    return nn.MaxPool2d(3, 2, padding=1) if enabled else nn.Identity()


def _stage_strides(widths: tuple[int, ...], depth: int) -> list[tuple[int, int]]:
    """(width, stride) of every block: ``depth`` blocks per stage, the first of each later stage strided."""
    return [(width, 2 if i and not j else 1) for i, width in enumerate(widths) for j in range(depth)]


class SmallResNet(nn.Module):
    """He et al.'s CIFAR ResNet (arXiv 1512.03385, section 4.2): a 3x3 stem, three stages of
    ``(depth - 2) / 6`` basic blocks at ``widths`` (strides 1, 2, 2), global pooling, a linear
    classifier. Every conv and norm comes from the ``norm`` choice (:func:`norm_factory`).

    Args:
        micro_batch: every norm sees micro-batches of this many images, as each GPU's norms do in
            data-parallel training (see :func:`_micro_batched`).
        stem_stride: the stride of the stem conv.
        stem_pool: the stem ends with ImageNet ResNet's 3x3 stride-2 max-pool. With ``stem_stride``
            2 as well, the stages run at a quarter of the input's resolution, as ImageNet's do.
    """

    def __init__(self, norm: str = "bn", depth: int = 8, widths: tuple[int, int, int] = (16, 32, 64),
                 num_groups: int | None = None, in_chans: int = 1, num_classes: int = 10,
                 micro_batch: int | None = None, stem_stride: int = 1, stem_pool: bool = False):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
        conv, norm_layer = get_norm(norm).conv_layer, norm_factory(norm, num_groups)
        if micro_batch is not None:
            norm_layer = partial(_micro_batched, norm_layer, micro_batch=micro_batch)
        self.conv1 = conv(in_chans, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.pool = _stem_pool(stem_pool)
        blocks, in_chs = [], widths[0]
        for width, stride in _stage_strides(widths, (depth - 2) // 6):
            blocks.append(BasicBlock(in_chs, width, stride, conv, norm_layer))
            in_chs = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_chs, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


class SmallNFResNet(nn.Module):
    """The normalizer-free twin of :class:`SmallResNet`: the same stem (its conv, then the pool without
    an activation between them, as DeepMind's NF-ResNet stem), depth, widths and strides,
    with nfzoo's NF-ResNet block (:class:`~nfzoo.models.nfnet.NFBlock`: ``x + alpha * skip_gain *
    f(relu_gamma(x) * beta)``, Scaled WS convs, SkipInit) in place of each basic block.

    Brock et al. (arXiv 2101.08692) use bottleneck blocks; here the bottleneck ratio is 1
    (1x1 -> 3x3 -> 1x1 at the stage width), so each block has 11 w^2 conv weights against the
    basic block's 18 w^2, and the twin is the smaller network of the two.
    """

    def __init__(self, depth: int = 8, widths: tuple[int, int, int] = (16, 32, 64), in_chans: int = 1,
                 num_classes: int = 10, stem_stride: int = 1, stem_pool: bool = False, alpha: float = 0.2):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
        per_stage = (depth - 2) // 6
        cfg = NFNetCfg(depths=(per_stage,) * len(widths), widths=widths, bottleneck_ratio=1.0, group_width=None,
                       extra_conv=False, se_ratio=None, avg_down=False, final_conv_mult=None, alpha=alpha, act="relu")
        conv, act = partial(ScaledStdConv2d, padding="same"), partial(GammaAct, "relu")
        self.stem = nn.Sequential(conv(in_chans, widths[0], 3, stride=stem_stride), _stem_pool(stem_pool))
        blocks, in_chs = [], widths[0]
        for (width, stride), beta in zip(_stage_strides(widths, per_stage), expected_std_betas(cfg.depths, alpha)):
            blocks.append(NFBlock(in_chs, width, stride, beta, cfg, act, conv))
            in_chs = width
        self.blocks = nn.Sequential(*blocks)
        self.final_act = act()
        self.fc = nn.Linear(in_chs, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)  # DeepMind's classifier init
        nn.init.zeros_(self.fc.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_act(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))
