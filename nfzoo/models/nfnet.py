"""NFNet-F0 ... F7: DeepMind's Normalizer-Free Networks.

Paper: Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization" (2021, arXiv 2102.06171); architecture as in DeepMind's release
(deepmind-research/nfnets/nfnet.py). Module and parameter names are those of timm's
``dm_nfnet_f*``, so the converted DeepMind weights on the Hugging Face Hub
(``timm/dm_nfnet_fN.dm_in1k``) load unchanged.

``import nfzoo`` registers ``nfnet_f0`` ... ``nfnet_f7`` with timm, replacing timm's weightless
models of the same names (a different variant: gamma folded into the convs, no skip gains).

Numerics (``numerics=`` model argument):

* ``'deepmind'`` (default): DeepMind's weight standardization ``rsqrt(max(var * fan_in, 1e-4))``
  and their tanh-approximated GELU. The published accuracies were measured with these.
* ``'timm'``: timm's ``rsqrt(var + 1e-5) * fan_in**-0.5`` and erf GELU, reproducing timm's
  ``dm_nfnet_f*`` logits exactly.

DeepMind's release also defines NFNet-F0+ ... F7+ (``base.py``: widths 384, 768, 2048, 2048
instead of 256, 512, 1536, 1536, so a stem of 192 channels and a final conv of 4096; otherwise as
FN), registered as ``nfnet_f0_plus`` ... ``nfnet_f7_plus``. No weights exist for them.

The same network skeleton, with another :class:`NFNetCfg`, builds the NF-ResNets
(:mod:`nfzoo.models.nf_resnet`) and DeepMind's NF-RegNets (:mod:`nfzoo.models.dm_nf_regnet`).
"""

from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from functools import partial
from typing import Any, Literal

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import AvgPool2dSame, ClassifierHead
from timm.layers.pool2d_same import MaxPool2dSame
from timm.layers.padding import pad_same
from timm.models import checkpoint, checkpoint_seq, generate_default_cfgs

from ..layers import DropPath, GammaAct, ScaledStdConv2d, SqueezeExcite
from ..layers.std_conv import StdNumerics, is_weight_standardized
from ..optim.param_groups import no_weight_decay_names
from ..timm_private import feature_take_indices
from ..weights.manifest import checkpoint, manifest, pretrained_cfg
from ..weights.loading import unwrap_state_dict
from ._arguments import check_model_args
from ._builder import build_zoo_model
from ._registry import register_zoo_model

__all__ = ["NFNet", "NFNetCfg", "NFBlock", "checkpoint_filter_fn", "expected_std_betas"]

# DeepMind's GELU is jax.nn.gelu (tanh approximation); timm uses the exact (erf) GELU.
_GELU_FOR_NUMERICS = {"deepmind": "gelu_tanh", "timm": "gelu"}

torch.fx.wrap("pad_same")  # one node in any symbolic trace: SAME padding depends on the input's size


@dataclass(frozen=True)
class NFNetCfg:
    """The architecture of a normalizer-free pre-activation ResNet.

    The defaults are NFNet's; :mod:`nfzoo.models.nf_resnet` and :mod:`nfzoo.models.dm_nf_regnet`
    override what differs.
    """
    depths: tuple[int, ...]
    widths: tuple[int, ...] = (256, 512, 1536, 1536)
    # four 3x3 convs (stride 4) | 7x7 conv + 3x3 max-pool (stride 4) | one 3x3 conv (stride 2)
    stem: Literal["deep", "7x7_pool", "3x3"] = "deep"
    stem_width: int = 128
    first_stride: int = 1  # of the first stage; every later stage strides 2
    bottleneck_ratio: float = 0.5  # bottleneck width = int(chs * ratio), rounded down to whole groups
    bottleneck_of: Literal["out", "in"] = "out"  # chs: the block's output | input channels (NF-RegNet)
    first_bottleneck_ratio: float | None = None  # the network's first block's ratio; None: bottleneck_ratio
    group_width: int | None = 128  # channels per group of the 3x3 convs; None: ungrouped
    extra_conv: bool = True  # NFNet's second grouped 3x3 conv (conv2b)
    se_ratio: float | None = 0.5  # squeeze-excite hidden = int(chs * ratio); None: no SE
    # SE after the last 1x1 conv, on out_ch (``attn_last``) | after the 3x3 conv, on the bottleneck (``attn``)
    se_position: Literal["last", "mid"] = "last"
    avg_down: bool = True  # transition shortcut: 2x2 avg-pool + 1x1 conv | strided 1x1 conv
    # final 1x1 conv to int(mult * widths[-1]) channels (a Fraction keeps it exact); None: none
    final_conv_mult: float | Fraction | None = 2.0
    alpha: float = 0.2
    act: Literal["gelu", "relu", "silu"] = "gelu"
    drop_rate: float = 0.0  # dropout before the classifier
    stochdepth_rate: float = 0.25  # of the last block; block i gets rate * i / num_blocks
    fc_init_std: float = 0.01  # the classifier's weight starts N(0, std); 0: zeros


def expected_std_betas(depths: tuple[int, ...], alpha: float) -> list[float]:
    """``beta = 1 / expected_std`` of every block's input, in DeepMind's way.

    Each block adds ``alpha**2`` to the signal variance of the residual stream. A transition
    (first) block's shortcut is a conv of its normalised input, so after it the variance is
    ``1 + alpha**2`` again; the transition block itself still sees the previous stage's variance.
    """
    betas, expected_std = [], 1.0
    for depth in depths:
        for block_idx in range(depth):
            betas.append(1.0 / expected_std)
            if block_idx == 0:
                expected_std = 1.0
            expected_std = (expected_std**2 + alpha**2) ** 0.5
    return betas


class Downsample(nn.Module):
    """The projection shortcut: (2x2 SAME avg-pool,) then a 1x1 conv.

    Where a stage is dilated instead of strided (``output_stride`` < 32), the pool keeps its 2x2
    window at stride 1, as timm's ``DownsampleAvg`` does (timm's ``AvgPool2dSame``).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv: type[nn.Module], avg_down: bool,
                 dilation: int = 1):
        super().__init__()
        if not avg_down or (stride == 1 and dilation == 1):
            self.pool = nn.Identity()
        elif dilation == 1:  # haiku's SAME avg-pool averages the valid elements only, as count_include_pad=False
            self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        else:
            self.pool = AvgPool2dSame(2, 1, ceil_mode=True, count_include_pad=False)
        self.conv = conv(in_chs, out_chs, 1, stride=1 if avg_down else stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class NFBlock(nn.Module):
    """Normalizer-free pre-activation bottleneck: ``x + alpha * skip_gain * f(act(x) * beta)``.

    ``f`` is 1x1 conv -> act -> 3x3 (grouped, strided) [-> act -> 3x3 grouped] [-> squeeze-excite
    (NF-RegNet)] -> act -> 1x1 conv [-> squeeze-excite (NFNet)] -> stochastic depth. A projection
    shortcut, when the shape changes, takes ``act(x) * beta`` as its input; otherwise the shortcut
    is the raw ``x``. ``bottleneck_ratio`` overrides ``cfg.bottleneck_ratio`` for this block.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, beta: float, cfg: NFNetCfg,
                 act_layer: type[nn.Module], conv: type[nn.Module], drop_path_rate: float = 0.0,
                 dilation: int = 1, first_dilation: int | None = None, bottleneck_ratio: float | None = None):
        super().__init__()
        ratio = cfg.bottleneck_ratio if bottleneck_ratio is None else bottleneck_ratio
        width = int((out_chs if cfg.bottleneck_of == "out" else in_chs) * ratio)
        groups = width // cfg.group_width if cfg.group_width else 1
        width = cfg.group_width * groups if cfg.group_width else width
        self.beta, self.alpha = beta, cfg.alpha
        self.act = act_layer()
        first_dilation = first_dilation or dilation
        # a stage's first block projects its shortcut also where it dilates instead of striding
        self.downsample = (Downsample(in_chs, out_chs, stride, conv, cfg.avg_down, dilation)
                           if stride > 1 or in_chs != out_chs or dilation != first_dilation else None)
        self.conv1 = conv(in_chs, width, 1)
        self.conv2 = conv(width, width, 3, stride=stride, dilation=first_dilation, groups=groups)
        self.conv2b = conv(width, width, 3, dilation=dilation, groups=groups) if cfg.extra_conv else None

        def squeeze_excite(chs: int, position: str) -> SqueezeExcite | None:
            return SqueezeExcite(chs, int(chs * cfg.se_ratio)) if cfg.se_ratio and cfg.se_position == position else None
        self.attn = squeeze_excite(width, "mid")
        self.conv3 = conv(width, out_chs, 1)
        self.attn_last = squeeze_excite(out_chs, "last")
        self.drop_path = DropPath(drop_path_rate, scale_by_keep=False) if drop_path_rate > 0 else nn.Identity()
        self.skipinit_gain = nn.Parameter(torch.zeros(()))  # SkipInit: the residual starts switched off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(x).mul_(self.beta)  # in place: act(x) is a fresh tensor, x stays the shortcut
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv2(self.act(self.conv1(out)))
        if self.conv2b is not None:
            out = self.conv2b(self.act(out))
        if self.attn is not None:
            out = self.attn(out)
        out = self.conv3(self.act(out))
        if self.attn_last is not None:
            out = self.attn_last(out)
        out = self.drop_path(out)
        # shortcut + alpha * gain * out, in out's dtype: under autocast, addcmul runs in its widest
        # input's dtype, and a float32 gain would turn the whole residual stream to float32
        return torch.addcmul(shortcut, out, (self.skipinit_gain * self.alpha).to(out.dtype))


class SameMaxPool2d(MaxPool2dSame):
    """timm's TensorFlow-SAME max-pool, its input-dependent padding one node in a symbolic trace, so
    that plain ``torch.fx`` (and torchvision's feature extraction) trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation, value=-float("inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


def _make_stem(cfg: NFNetCfg, in_chans: int, act_layer: type[nn.Module], conv: type[nn.Module]
               ) -> tuple[nn.Sequential, dict[str, Any], int, int]:
    """The stem, its feature tap (reduction 2), the tap's index in it and the stem's output stride."""
    if cfg.stem == "deep":  # NFNet: 3x3 convs 16/2 -> 32 -> 64 -> stem_width/2, no act after the last
        layers = OrderedDict()
        for i, (chs, stride) in enumerate(zip((16, 32, 64, cfg.stem_width), (2, 1, 1, 2)), start=1):
            if i > 1:
                layers[f"act{i}"] = act_layer()
            layers[f"conv{i}"] = conv(in_chans, chs, 3, stride=stride)
            in_chans = chs
        return nn.Sequential(layers), dict(num_chs=64, reduction=2, module="stem.conv3"), 4, 4
    tap = dict(num_chs=cfg.stem_width, reduction=2, module="stem.conv")
    if cfg.stem == "3x3":  # NF-RegNet: one 3x3/2 conv, no activation (each block starts with one)
        return nn.Sequential(OrderedDict(conv=conv(in_chans, cfg.stem_width, 3, stride=2))), tap, 0, 2
    # NF-ResNet: 7x7/2 conv (with a bias, as every WSConv2D of the release), 3x3/2 SAME max-pool
    stem = nn.Sequential(OrderedDict(
        conv=conv(in_chans, cfg.stem_width, 7, stride=2),
        pool=SameMaxPool2d(3, stride=2),
    ))
    return stem, tap, 0, 4


@torch.fx.wrap  # one node in any symbolic trace (a trace cannot branch on the input's shape)
def check_image_batch(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"expected an (N, {in_chans}, H, W) image batch, got shape {list(x.shape)}: the model was built "
            f"for in_chans={in_chans}; convert the images, or create the model with in_chans set to their "
            "channel count")
    if min(x.shape[-2], x.shape[-1]) < min_size:
        raise ValueError(
            f"input of {x.shape[-2]}x{x.shape[-1]} px is smaller than the network's output stride: "
            f"resize it to at least {min_size}x{min_size} (the model's pretrained_cfg gives the sizes "
            "it was trained and evaluated at)")


class NFNet(nn.Module):
    """A normalizer-free ResNet (NFNet or NF-ResNet) with timm's model interface.

    Args:
        cfg: the architecture.
        numerics: ``'deepmind'`` or ``'timm'`` (see the module docstring).
        num_classes, in_chans, global_pool: as for every timm model.
        drop_rate: dropout before the classifier; None: the variant's rate (``cfg.drop_rate``).
        drop_path_rate: stochastic depth of the last block; None: ``cfg.stochdepth_rate``.
            Blocks are dropped without rescaling by the keep probability, as DeepMind does.
        output_stride: 32, or 16 / 8 for dense prediction: the last stages then dilate their
            3x3 convs instead of striding, as timm's ``dm_nfnet`` does (same parameters, so the
            pretrained weights load unchanged).
    """

    def __init__(
        self,
        cfg: NFNetCfg,
        numerics: StdNumerics = "deepmind",
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float | None = None,
        drop_path_rate: float | None = None,
        output_stride: int = 32,
        **kwargs: Any,
    ):
        super().__init__()
        if numerics not in _GELU_FOR_NUMERICS:
            raise ValueError(f"numerics must be one of {sorted(_GELU_FOR_NUMERICS)}, got {numerics!r}")
        check_model_args(type(self).__name__, dict(
            num_classes=num_classes, in_chans=in_chans, output_stride=output_stride, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate))
        unknown = sorted(set(kwargs) - {f.name for f in fields(NFNetCfg)})
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {unknown}: it takes numerics, "
                            "num_classes, in_chans, global_pool, drop_rate, drop_path_rate, output_stride and "
                            f"the NFNetCfg fields {[f.name for f in fields(NFNetCfg)]}")
        cfg = replace(cfg, **kwargs)  # e.g. NFNetCfg fields such as alpha, se_ratio
        self.cfg, self.numerics = cfg, numerics
        self.num_classes, self.in_chans = num_classes, in_chans
        self.drop_rate = cfg.drop_rate if drop_rate is None else drop_rate
        drop_path_rate = cfg.stochdepth_rate if drop_path_rate is None else drop_path_rate
        self.grad_checkpointing = False

        act_layer = partial(GammaAct, _GELU_FOR_NUMERICS[numerics] if cfg.act == "gelu" else cfg.act)
        conv = partial(ScaledStdConv2d, padding="same", numerics=numerics)
        self.stem, stem_feature, self.stem_feat_idx, reduction = _make_stem(cfg, in_chans, act_layer, conv)
        self.feature_info = [stem_feature]

        betas = iter(expected_std_betas(cfg.depths, cfg.alpha))
        num_blocks, block_idx = sum(cfg.depths), 0
        in_chs, dilation, stages = cfg.stem_width, 1, []
        for stage_idx, (depth, out_chs) in enumerate(zip(cfg.depths, cfg.widths)):
            stride = cfg.first_stride if stage_idx == 0 else 2
            if reduction >= output_stride and stride > 1:  # dilate instead of striding, as timm
                dilation, stride = dilation * stride, 1
            reduction *= stride
            first_dilation = 1 if dilation in (1, 2) else 2  # the first block's conv2 keeps the previous rate
            blocks = []
            for i in range(depth):
                ratio = cfg.first_bottleneck_ratio if block_idx == 0 else None
                blocks.append(NFBlock(in_chs, out_chs, stride if i == 0 else 1, next(betas), cfg, act_layer, conv,
                                      drop_path_rate * block_idx / num_blocks,
                                      dilation, first_dilation if i == 0 else dilation, bottleneck_ratio=ratio))
                in_chs, block_idx = out_chs, block_idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{stage_idx}"))
        self.stages = nn.Sequential(*stages)
        self.min_input_size = reduction

        if cfg.final_conv_mult:
            self.num_features = int(in_chs * cfg.final_conv_mult)
            self.final_conv = conv(in_chs, self.num_features, 1)
            self.feature_info[-1] = dict(num_chs=self.num_features, reduction=reduction, module="final_conv")
        else:
            self.num_features = in_chs
            self.final_conv = nn.Identity()
        self.final_act = act_layer()
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=self.drop_rate)
        self.head_hidden_size = self.head.num_features
        self._init_weights()

    def _init_weights(self) -> None:
        """DeepMind's initialisation: WS convs N(0, 1 / fan_in) (haiku's ``VarianceScaling(1, 'fan_in',
        'normal')``), zero biases; the classifier N(0, ``cfg.fc_init_std``); the squeeze-excites'
        linears haiku's ``hk.Linear`` default (:meth:`SqueezeExcite.reset_parameters`)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, self.cfg.fc_init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, SqueezeExcite):
                m.reset_parameters()
            elif is_weight_standardized(m):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=[
            (r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
            (r"^final_conv", (99999,)),
        ])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Gains and biases: DeepMind applies weight decay to the conv and linear weights only."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features at ``indices`` of :attr:`feature_info` (0: the stem tap, then the stages;
        the last is taken after ``final_conv``, before its activation), as timm's models do."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_image_batch(x, self.in_chans, self.min_input_size)
        last_idx = len(self.stages)
        take_indices, max_index = feature_take_indices(last_idx + 1, indices)
        intermediates = []
        for i, module in enumerate(self.stem):
            x = module(x)
            if i == self.stem_feat_idx and 0 in take_indices:
                intermediates.append(x)
        stages = self.stages[:max_index] if stop_early and not torch.jit.is_scripting() else self.stages
        for feat_idx, stage in enumerate(stages, start=1):
            x = checkpoint(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if feat_idx == last_idx:
                x = self.final_conv(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) == last_idx:
            x = self.final_act(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the layers after the last of ``indices``; returns the indices kept."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        if prune_end:
            self.final_conv, self.final_act = nn.Identity(), nn.Identity()
            self.num_features = self.feature_info[max_index]["num_chs"]
        if max_index == 0:
            self.stem = self.stem[:self.stem_feat_idx + 1]
        self.stages = self.stages[:max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans, self.min_input_size)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.final_act(self.final_conv(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The filter of every model built on :class:`NFNet`: its keys are timm's ``dm_nfnet`` layout,
    used as they are once unwrapped (:func:`~nfzoo.weights.loading.unwrap_state_dict`)."""
    return unwrap_state_dict(state_dict)


def create_nf_model(variant: str, cfg: NFNetCfg, pretrained: bool = False, **kwargs: Any) -> NFNet:
    """Build a registered NFNet or NF-ResNet variant through the zoo's builder."""
    # features_only returns every level by default: the stem's and one per stage (timm's
    # default of five levels would not exist in a shallower net such as nfnet_mini)
    levels = 1 + len(kwargs.get("depths", cfg.depths))
    return build_zoo_model(
        NFNet, variant, pretrained, checkpoint_filter=checkpoint_filter_fn,
        model_cfg=cfg, feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(levels))), **kwargs)


def nf_pretrained_cfg(**kwargs: Any) -> dict[str, Any]:
    """The parts of a pretrained cfg shared by every NFNet and NF-ResNet, overlaid with ``kwargs``."""
    return dict(num_classes=1000, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation="bicubic",
                first_conv="stem.conv1", classifier="head.fc", min_input_size=(3, 32, 32)) | kwargs


@dataclass(frozen=True)
class NFNetVariant:
    """One row of DeepMind's variant table (``nfnet_params`` in base.py; Table 1 of the paper).
    The evaluation size of a variant with weights is its manifest entry's ``test_size``."""
    depths: tuple[int, int, int, int]
    train_size: int  # px
    drop_rate: float
    test_size: int | None = None  # px; only for a variant without weights (F7)


VARIANTS: dict[str, NFNetVariant] = {
    "f0": NFNetVariant(depths=(1, 2, 6, 3), train_size=192, drop_rate=0.2),
    "f1": NFNetVariant(depths=(2, 4, 12, 6), train_size=224, drop_rate=0.3),
    "f2": NFNetVariant(depths=(3, 6, 18, 9), train_size=256, drop_rate=0.4),
    "f3": NFNetVariant(depths=(4, 8, 24, 12), train_size=320, drop_rate=0.4),
    "f4": NFNetVariant(depths=(5, 10, 30, 15), train_size=384, drop_rate=0.5),
    "f5": NFNetVariant(depths=(6, 12, 36, 18), train_size=416, drop_rate=0.5),
    "f6": NFNetVariant(depths=(7, 14, 42, 21), train_size=448, drop_rate=0.5),
    "f7": NFNetVariant(depths=(8, 16, 48, 24), train_size=480, drop_rate=0.5, test_size=608),
}
# FN+ ("slightly wider"): widths 384, 768, 2048, 2048, so the stem ends in 384 // 2 channels
PLUS_WIDTHS = (384, 768, 2048, 2048)

model_cfgs = {f"nfnet_{v}": NFNetCfg(depths=row.depths, drop_rate=row.drop_rate) for v, row in VARIANTS.items()}
model_cfgs |= {f"nfnet_{v}_plus": NFNetCfg(depths=row.depths, drop_rate=row.drop_rate, widths=PLUS_WIDTHS,
                                           stem_width=PLUS_WIDTHS[0] // 2) for v, row in VARIANTS.items()}


def _weights_tag(variant: str) -> str | None:
    """The manifest name of NFNet-FN's weights (FN+ shares FN's evaluation size), or None."""
    name = f"nfnet_{variant}.dm_in1k"
    return name if name in manifest() else None


def _cfg(variant: str, plus: bool) -> dict[str, Any]:
    row, tag = VARIANTS[variant], _weights_tag(variant)
    size = dict(input_size=(3, row.train_size, row.train_size), pool_size=(row.train_size // 32,) * 2)
    if tag is not None and not plus:
        return pretrained_cfg(tag, **nf_pretrained_cfg(**size))
    test_size = checkpoint(tag).test_size if tag is not None else row.test_size
    return nf_pretrained_cfg(
        url="", test_input_size=(3, test_size, test_size), crop_pct=test_size / (test_size + 32),
        crop_mode="squash", paper_ids="arXiv:2102.06171", license="apache-2.0",
        notes=(f"DeepMind released no NFNet-{variant.upper()}{'+' if plus else ''} weights (F0-F6 only); "
               "this model is architecture only.",),
        **size)


default_cfgs = generate_default_cfgs(
    {(_weights_tag(v) or f"nfnet_{v}"): _cfg(v, False) for v in VARIANTS}
    | {f"nfnet_{v}_plus": _cfg(v, True) for v in VARIANTS})


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> NFNet:
    return create_nf_model(name, model_cfgs[name], pretrained, **kwargs)


@register_zoo_model
def nfnet_f0(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F0 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f0", pretrained, kwargs)


@register_zoo_model
def nfnet_f1(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F1 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f1", pretrained, kwargs)


@register_zoo_model
def nfnet_f2(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F2 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f2", pretrained, kwargs)


@register_zoo_model
def nfnet_f3(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F3 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f3", pretrained, kwargs)


@register_zoo_model
def nfnet_f4(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F4 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f4", pretrained, kwargs)


@register_zoo_model
def nfnet_f5(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F5 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f5", pretrained, kwargs)


@register_zoo_model
def nfnet_f6(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F6 (DeepMind); weights ``dm_in1k`` (docs/models.md)."""
    return _create("nfnet_f6", pretrained, kwargs)


@register_zoo_model
def nfnet_f7(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F7 (DeepMind's largest); no weights were released."""
    return _create("nfnet_f7", pretrained, kwargs)


@register_zoo_model
def nfnet_f0_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F0+ (DeepMind's wider F0); no weights were released."""
    return _create("nfnet_f0_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f1_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F1+ (DeepMind's wider F1); no weights were released."""
    return _create("nfnet_f1_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f2_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F2+ (DeepMind's wider F2); no weights were released."""
    return _create("nfnet_f2_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f3_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F3+ (DeepMind's wider F3); no weights were released."""
    return _create("nfnet_f3_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f4_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F4+ (DeepMind's wider F4); no weights were released."""
    return _create("nfnet_f4_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f5_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F5+ (DeepMind's wider F5); no weights were released."""
    return _create("nfnet_f5_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f6_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F6+ (DeepMind's wider F6); no weights were released."""
    return _create("nfnet_f6_plus", pretrained, kwargs)


@register_zoo_model
def nfnet_f7_plus(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NFNet-F7+ (DeepMind's wider F7); no weights were released."""
    return _create("nfnet_f7_plus", pretrained, kwargs)
