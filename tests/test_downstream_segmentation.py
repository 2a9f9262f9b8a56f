"""GroupNorm conversion of segmentation_models_pytorch decoders: a valid group count at any
width, all or nothing, and the shipped example running as is (DeepLabV3+ at batch 1 included)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from nfzoo.downstream import head_norms
from nfzoo.downstream.head_norms import gn_groups, to_group_norm
from nfzoo.layers import WSConv2d

smp = pytest.importorskip("segmentation_models_pytorch")
EXAMPLE = Path(__file__).parents[1] / "examples" / "smp_unet_timm_encoder.py"


def test_group_count_is_valid_for_every_width():
    for channels in range(1, 1025):
        groups = gn_groups(channels)
        assert channels % groups == 0
        if channels % 32 == 0:
            assert groups == 32  # the GN paper's default
        else:  # a fixed 16 channels per group, or the largest divisor of 16 that fits
            assert channels // groups == math.gcd(channels, 16)


def _kinds(module: nn.Module) -> dict[type, int]:
    kinds = {}
    for m in module.modules():
        kinds[type(m)] = kinds.get(type(m), 0) + 1
    return kinds


@pytest.mark.parametrize("width", [16, 48, 256])
def test_unet_decoder_converts_at_width(width):
    model = smp.Unet("tu-resnet50_gn_ws", encoder_weights=None, classes=3,
                     decoder_channels=(256, 128, 64, 32, width))
    to_group_norm(model.decoder)
    kinds = _kinds(model.decoder)
    assert nn.BatchNorm2d not in kinds and nn.Conv2d not in kinds
    groups = {m.num_channels: m.num_groups for m in model.decoder.modules() if isinstance(m, nn.GroupNorm)}
    assert groups[width] == gn_groups(width)
    out = model.train()(torch.rand(1, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_deeplabv3plus_trains_at_batch_one_after_conversion():
    model = smp.DeepLabV3Plus("tu-resnet50_gn_ws", encoder_weights=None, classes=3).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.rand(1, 3, 64, 64))  # smp's ASPP pooling BatchNorm, unconverted
    to_group_norm(model.decoder)
    out = model(torch.rand(1, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (1, 3, 64, 64)


def test_failed_conversion_leaves_the_model_unchanged(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 48, 3), nn.BatchNorm2d(48), nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = _kinds(model)
    calls = []

    def fail_on_second(conv):
        calls.append(conv)
        if len(calls) == 2:
            raise RuntimeError("cannot convert")
        return WSConv2d(conv.in_channels, conv.out_channels, conv.kernel_size)

    monkeypatch.setattr(head_norms, "_to_ws", fail_on_second)
    with pytest.raises(RuntimeError, match="cannot convert"):
        to_group_norm(model)
    assert _kinds(model) == kinds
    torch.testing.assert_close(model.state_dict(), before)


def test_shipped_example_runs_as_is():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DeepLabV3Plus: (1, 4, 128, 128)" in out.stdout
