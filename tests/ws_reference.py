"""Test helpers for the GN+WS / BCN+WS family, written from the paper's equations and the
authors' releases, independently of nfzoo's code:

* :func:`authors_checkpoint` -- a random state dict with exactly the keys and shapes the
  authors' ImageNet code saves (DataParallel's ``module.`` prefix; ``nn.GroupNorm`` for GN+WS;
  BCN modules holding ``pbn`` = ``nn.BatchNorm2d`` and a ``(1, 32, 1)`` group affine).
* :func:`mmlab_checkpoint` -- the same weights as OpenMMLab's mirrors hold them.
* :func:`reference_forward` -- a functional forward pass from such a state dict.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GROUPS = 32
EPS = 1e-5
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
          "resnext50_32x4d": (3, 4, 6, 3), "resnext101_32x4d": (3, 4, 23, 3)}


def _cardinality(arch: str) -> tuple[int, int]:
    return (32, 4) if arch.startswith("resnext") else (1, 64)


def _sampler(seed: int | None):
    """``rand(*shape, scale, offset)``: seeded normal values, or meta tensors when seed is None."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1, offset=0.0):
        if gen is None:
            return torch.empty(*shape, device="meta")
        return offset + scale * torch.randn(*shape, generator=gen)
    return rand


def _norm_entries(name: str, channels: int, bcn: bool, rand) -> dict[str, torch.Tensor]:
    if not bcn:
        return {f"{name}.weight": rand(channels, offset=1.0), f"{name}.bias": rand(channels)}
    return {
        f"{name}.weight": rand(1, GROUPS, 1, offset=1.0),
        f"{name}.bias": rand(1, GROUPS, 1),
        f"{name}.pbn.weight": rand(channels, offset=1.0),
        f"{name}.pbn.bias": rand(channels),
        f"{name}.pbn.running_mean": rand(channels),
        f"{name}.pbn.running_var": rand(channels, offset=1.0),
        f"{name}.pbn.num_batches_tracked": torch.tensor(1000, dtype=torch.long),
    }


def authors_checkpoint(arch: str, bcn: bool, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """The authors' released layout for ``arch`` (GN+WS, or BCN+WS when ``bcn``): random values,
    or, with ``seed=None``, meta tensors (keys and shapes only, instantly)."""
    rand = _sampler(seed)
    cardinality, base_width = _cardinality(arch)

    def conv(cout, cin, k):
        return rand(cout, cin, k, k, scale=(2.0 / (cin * k * k)) ** 0.5)

    sd = {"conv1.weight": conv(64, 3, 7), **_norm_entries("bn1", 64, bcn, rand)}
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), DEPTHS[arch]), 1):
        width = planes * base_width // 64 * cardinality
        for j in range(blocks):
            p = f"layer{i}.{j}"
            sd[f"{p}.conv1.weight"] = conv(width, inplanes, 1)
            sd.update(_norm_entries(f"{p}.bn1", width, bcn, rand))
            sd[f"{p}.conv2.weight"] = conv(width, width // cardinality, 3)
            sd.update(_norm_entries(f"{p}.bn2", width, bcn, rand))
            sd[f"{p}.conv3.weight"] = conv(planes * 4, width, 1)
            sd.update(_norm_entries(f"{p}.bn3", planes * 4, bcn, rand))
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = conv(planes * 4, inplanes, 1)
                sd.update(_norm_entries(f"{p}.downsample.1", planes * 4, bcn, rand))
            inplanes = planes * 4
    sd["fc.weight"] = rand(1000, 2048, scale=0.01)
    sd["fc.bias"] = rand(1000, scale=0.01)
    return {"module." + k: v for k, v in sd.items()}


def mmlab_checkpoint(authors: dict[str, torch.Tensor]) -> dict:
    """OpenMMLab's mirror of a GN+WS file: mmdet's names (GroupNorm layers ``gn1``..``gn3``, the
    stem's ``gn1``), no ``module.`` prefix, wrapped in ``{'state_dict': ...}`` with a ``meta``."""
    import re
    renamed = {re.sub(r"(^|\.)bn(\d)\.", r"\1gn\2.", k.removeprefix("module.")): v for k, v in authors.items()}
    return {"meta": {"mmcv_version": "0.2"}, "state_dict": renamed}


def _ws(w: torch.Tensor, bcn: bool) -> torch.Tensor:
    flat = w.flatten(1)
    centered = flat - flat.mean(1, keepdim=True)
    var = flat.var(1, unbiased=True, keepdim=True)
    denom = torch.sqrt(var + EPS) if bcn else var.sqrt() + EPS
    return (centered / denom).view_as(w)


def _group_normalize(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    g = x.reshape(n, GROUPS, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + EPS)
    return g


def reference_norm(x: torch.Tensor, sd: dict, name: str, bcn: bool, train: bool) -> torch.Tensor:
    """GroupNorm (per-channel affine) or BCN (batch part, then group norm, per-group affine)."""
    c = (1, -1, 1, 1)
    if not bcn:
        return _group_normalize(x).view_as(x) * sd[f"{name}.weight"].view(c) + sd[f"{name}.bias"].view(c)
    if train:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = sd[f"{name}.pbn.running_mean"], sd[f"{name}.pbn.running_var"]
    x = (x - mean.view(c)) / torch.sqrt(var.view(c) + EPS)
    x = x * sd[f"{name}.pbn.weight"].view(c) + sd[f"{name}.pbn.bias"].view(c)
    return (_group_normalize(x) * sd[f"{name}.weight"] + sd[f"{name}.bias"]).view_as(x)


def reference_forward(sd: dict, arch: str, bcn: bool, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    """Logits of the authors' network ``arch`` with weights ``sd`` (no ``module.`` prefix)."""
    cardinality, _ = _cardinality(arch)

    def conv(t, name, stride=1, padding=0, groups=1):
        return F.conv2d(t, _ws(sd[f"{name}.weight"], bcn), None, stride, padding, 1, groups)

    def norm(t, name):
        return reference_norm(t, sd, name, bcn, train)

    x = F.relu(norm(conv(x, "conv1", 2, 3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for i, blocks in enumerate(DEPTHS[arch], 1):
        for j in range(blocks):
            p = f"layer{i}.{j}"
            stride = 2 if i > 1 and j == 0 else 1
            out = F.relu(norm(conv(x, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(norm(conv(out, f"{p}.conv2", stride, 1, cardinality), f"{p}.bn2"))
            out = norm(conv(out, f"{p}.conv3"), f"{p}.bn3")
            shortcut = norm(conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1") if j == 0 else x
            x = F.relu(out + shortcut)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])
