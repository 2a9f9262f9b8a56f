"""NF-RegNets B0 ... B8: DeepMind's normalizer-free RegNets, with their training recipe.

Paper: Brock, De and Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (ICLR 2021, arXiv 2101.08692); architecture as in DeepMind's release
(deepmind-research/nfnets/nf_regnet.py, variants in base.py's ``nf_regnet_params``, trained by
experiment_nf_regnets.py). The NFNet skeleton of :mod:`nfzoo.models.nfnet` with this config:

* widths: the variant's times 0.75; one 3x3/2 stem conv to ``int(0.75 * widths[0])`` channels;
  every stage strides 2;
* block: 1x1 conv expanding the block's *input* 2.25x (1x for the network's first block, after
  EfficientNet), rounded down to groups of 8 -> act -> grouped 3x3 (strided) -> squeeze-excite
  (ratio 0.5, on the expanded width) -> act -> 1x1 conv; the usual ``x + alpha * skip_gain * f``
  with ``beta = 1 / expected_std``, reset after each stage's first block; alpha 0.2;
* SiLU with its gamma; final 1x1 conv to ``1280 * ch // 440`` channels; zero-initialised classifier;
  stochastic depth 0.1.

Names: ``dm_nf_regnet_b0`` ... ``dm_nf_regnet_b8``. timm's ``nf_regnet_b*`` are timm's own
design (another stem, widths, SE and pooling), so their names stay timm's. No weights exist:
DeepMind released none for NF-RegNets.

:func:`nf_regnet_recipe` gives experiment_nf_regnets.py's training settings for a variant, under
the field names of :class:`nfzoo.train.config.TrainConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from timm.models import generate_default_cfgs

from ._registry import register_zoo_model
from .nfnet import NFNet, NFNetCfg, create_nf_model, nf_pretrained_cfg

__all__ = ["NFRegNetVariant", "NFRegNetRecipe", "VARIANTS", "nf_regnet_cfg", "nf_regnet_recipe"]

WIDTH_MULT = 0.75


@dataclass(frozen=True)
class NFRegNetVariant:
    """One row of ``nf_regnet_params`` (base.py), and the variant's weight decay
    (experiment_nf_regnets.py). No weights exist, so the evaluation size is the release's."""
    widths: tuple[int, int, int, int]  # before the 0.75 width multiplier
    depths: tuple[int, int, int, int]
    train_size: int  # px
    test_size: int  # px
    drop_rate: float
    # "5e-5 + 1e-5 * level"; the release lists B0-B5, B6-B8 follow the same rule
    weight_decay: float


VARIANTS: dict[str, NFRegNetVariant] = {
    "b0": NFRegNetVariant(widths=(48, 104, 208, 440), depths=(1, 3, 6, 6), train_size=192, test_size=224,
                          drop_rate=0.2, weight_decay=5e-5),
    "b1": NFRegNetVariant(widths=(48, 104, 208, 440), depths=(2, 4, 7, 7), train_size=224, test_size=256,
                          drop_rate=0.2, weight_decay=6e-5),
    "b2": NFRegNetVariant(widths=(56, 112, 232, 488), depths=(2, 4, 8, 8), train_size=240, test_size=272,
                          drop_rate=0.3, weight_decay=7e-5),
    "b3": NFRegNetVariant(widths=(56, 128, 248, 528), depths=(2, 5, 9, 9), train_size=288, test_size=320,
                          drop_rate=0.3, weight_decay=8e-5),
    "b4": NFRegNetVariant(widths=(64, 144, 288, 616), depths=(2, 6, 11, 11), train_size=320, test_size=384,
                          drop_rate=0.4, weight_decay=9e-5),
    "b5": NFRegNetVariant(widths=(80, 168, 336, 704), depths=(3, 7, 14, 14), train_size=384, test_size=456,
                          drop_rate=0.4, weight_decay=1e-4),
    "b6": NFRegNetVariant(widths=(88, 184, 376, 792), depths=(3, 8, 16, 16), train_size=448, test_size=528,
                          drop_rate=0.5, weight_decay=1.1e-4),
    "b7": NFRegNetVariant(widths=(96, 208, 416, 880), depths=(4, 10, 19, 19), train_size=512, test_size=600,
                          drop_rate=0.5, weight_decay=1.2e-4),
    "b8": NFRegNetVariant(widths=(104, 232, 456, 968), depths=(4, 11, 22, 22), train_size=600, test_size=672,
                          drop_rate=0.5, weight_decay=1.3e-4),
}


def nf_regnet_cfg(variant: NFRegNetVariant) -> NFNetCfg:
    """DeepMind's NF-RegNet at one variant's widths and depths."""
    widths = tuple(int(w * WIDTH_MULT) for w in variant.widths)
    return NFNetCfg(
        depths=variant.depths,
        widths=widths,
        stem="3x3",
        stem_width=widths[0],
        first_stride=2,
        bottleneck_ratio=2.25,
        bottleneck_of="in",
        first_bottleneck_ratio=1.0,
        group_width=8,
        extra_conv=False,
        se_ratio=0.5,
        se_position="mid",
        final_conv_mult=Fraction(1280, 440),  # int(1280 * ch // 440), EfficientNet-B0's 1280 at ch = 440
        act="silu",
        drop_rate=variant.drop_rate,
        stochdepth_rate=0.1,
        fc_init_std=0.0,
    )


@dataclass(frozen=True)
class NFRegNetRecipe:
    """experiment_nf_regnets.py's training settings, named as :class:`~nfzoo.train.config.TrainConfig`'s
    fields: ``TrainConfig(**dataclasses.asdict(nf_regnet_recipe(name)))``.

    Elsewhere: the image sizes and the eval crop (aspect-preserving centre crop of
    ``test / (test + 32)``, bicubic) are in the model's ``pretrained_cfg``, stochastic depth 0.1
    is the model's default; MixUp + CutMix and the TF1-style EMA warmup are as in the NFNet recipe.
    """
    weight_decay: float
    epochs: int = 360
    batch_size: int = 1024
    lr: float = 0.4  # not scaled by the batch size (lr_scale_by_bs=False)
    warmup_epochs: float = 5.0  # linear from 0
    min_lr: float = 0.001  # the cosine's floor
    momentum: float = 0.9
    nesterov: bool = True
    agc_clip: float | None = None  # plain SGD: no adaptive gradient clipping
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.99999
    precision: str = "fp32"  # bfloat16=False


def nf_regnet_recipe(name: str) -> NFRegNetRecipe:
    """The training recipe of ``dm_nf_regnet_bN`` (or ``bN``)."""
    variant = name.removeprefix("dm_nf_regnet_")
    if variant not in VARIANTS:
        raise ValueError(f"no NF-RegNet called {name!r}; choose one of {[f'dm_nf_regnet_{v}' for v in VARIANTS]}")
    return NFRegNetRecipe(weight_decay=VARIANTS[variant].weight_decay)


model_cfgs = {f"dm_nf_regnet_{v}": nf_regnet_cfg(row) for v, row in VARIANTS.items()}

default_cfgs = generate_default_cfgs({
    f"dm_nf_regnet_{v}": nf_pretrained_cfg(
        url="", input_size=(3, row.train_size, row.train_size), pool_size=(row.train_size // 32,) * 2,
        test_input_size=(3, row.test_size, row.test_size), crop_pct=row.test_size / (row.test_size + 32),
        first_conv="stem.conv", paper_ids="arXiv:2101.08692", license="apache-2.0",
        notes=("No pretrained weights exist: DeepMind released none for NF-RegNets.",))
    for v, row in VARIANTS.items()
})


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> NFNet:
    return create_nf_model(name, model_cfgs[name], pretrained, **kwargs)


@register_zoo_model
def dm_nf_regnet_b0(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B0 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b0", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b1(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B1 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b1", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b2(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B2 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b2", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b3(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B3 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b3", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b4(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B4 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b4", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b5(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B5 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b5", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b6(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B6 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b6", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b7(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B7 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b7", pretrained, kwargs)


@register_zoo_model
def dm_nf_regnet_b8(pretrained: bool = False, **kwargs: Any) -> NFNet:
    """NF-RegNet-B8 (DeepMind's definition), no weights."""
    return _create("dm_nf_regnet_b8", pretrained, kwargs)
