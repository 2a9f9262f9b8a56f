"""An independent functional reference of DeepMind's NFNet and NF-ResNet equations (their
haiku release in google-deepmind/deepmind-research, nfnets/, and the papers), evaluated from a state dict in timm's
``dm_nfnet`` key layout. Used only by the tests."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GAMMA = {"gelu_tanh": 1.7015043497085571, "relu": 1.7139588594436646}
ACT = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh") * GAMMA["gelu_tanh"],
    "relu": lambda x: F.relu(x) * GAMMA["relu"],
}


def tf_same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's SAME rule: out = ceil(n / s), the odd pixel of padding goes after."""
    pads = []
    for n in reversed(x.shape[-2:]):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def ws_conv(x, sd, name, stride=1):
    """haiku WSConv2D: scale = gain * rsqrt(max(var * fan_in, 1e-4)); w * scale - mean * scale;
    then the bias, which WSConv2D always adds (whatever ``with_bias`` says)."""
    w = sd[name + ".weight"]
    fan_in = w[0].numel()
    mean = w.mean((1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean((1, 2, 3), keepdim=True)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=1e-4)) * sd[name + ".gain"]
    w_hat = w * scale - mean * scale
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(tf_same_pad(x, w.shape[-1], stride), w_hat, sd[name + ".bias"], stride, groups=groups)


def avg_pool_same(x):
    """haiku avg_pool 2x2/2 SAME: the mean over the window's valid elements."""
    ones = torch.ones_like(x[:, :1])
    return F.avg_pool2d(tf_same_pad(x, 2, 2), 2) / F.avg_pool2d(tf_same_pad(ones, 2, 2), 2)


def betas(depths, alpha=0.2):
    out, expected_std = [], 1.0
    for depth in depths:
        for i in range(depth):
            out.append(1.0 / expected_std)
            expected_std = math.sqrt((1.0 if i == 0 else expected_std**2) + alpha**2)
    return out


def block(x, sd, p, stride, beta, act, nfnet, project, alpha=0.2):
    """One block; ``nfnet`` adds NFNet's avg-pool shortcut, second 3x3 conv and SE; ``project``:
    the block changes shape (every stage's first block in both families) and has a conv shortcut."""
    out = act(x) * beta
    if project:
        if nfnet and stride > 1:
            shortcut = ws_conv(avg_pool_same(out), sd, p + ".downsample.conv")
        else:
            shortcut = ws_conv(out, sd, p + ".downsample.conv", stride)
    else:
        shortcut = x
    out = ws_conv(out, sd, p + ".conv1")
    out = ws_conv(act(out), sd, p + ".conv2", stride)
    if nfnet:
        out = ws_conv(act(out), sd, p + ".conv2b")
    out = ws_conv(act(out), sd, p + ".conv3")
    if nfnet:
        h = out.mean((2, 3))
        h = F.relu(h @ sd[p + ".attn_last.fc1.weight"].flatten(1).T + sd[p + ".attn_last.fc1.bias"])
        h = torch.sigmoid(h @ sd[p + ".attn_last.fc2.weight"].flatten(1).T + sd[p + ".attn_last.fc2.bias"])
        out = 2 * h[:, :, None, None] * out
    out = out * sd[p + ".skipinit_gain"]
    return out * alpha + shortcut


def nfnet_logits(x, sd, depths):
    """DeepMind's NFNet forward (eval mode)."""
    act = ACT["gelu_tanh"]
    x = ws_conv(x, sd, "stem.conv1", 2)
    x = ws_conv(act(x), sd, "stem.conv2")
    x = ws_conv(act(x), sd, "stem.conv3")
    x = ws_conv(act(x), sd, "stem.conv4", 2)
    return _body_head(x, sd, depths, act, nfnet=True)


def nf_resnet_logits(x, sd, depths):
    """DeepMind's NF-ResNet forward (eval mode): 7x7/2 conv, 3x3/2 SAME max-pool, blocks, head."""
    act = ACT["relu"]
    x = ws_conv(x, sd, "stem.conv", 2)
    x = F.max_pool2d(tf_same_pad(x, 3, 2, value=-math.inf), 3, 2)
    return _body_head(x, sd, depths, act, nfnet=False)


def _body_head(x, sd, depths, act, nfnet):
    bs = iter(betas(depths))
    for s, depth in enumerate(depths):
        for i in range(depth):
            x = block(x, sd, f"stages.{s}.{i}", 2 if s > 0 and i == 0 else 1, next(bs), act, nfnet, project=i == 0)
    if nfnet:  # NFNet's final 1x1 conv; NF-ResNet has none
        x = ws_conv(x, sd, "final_conv")
    pooled = act(x).mean((2, 3))
    return pooled @ sd["head.fc.weight"].T + sd["head.fc.bias"]
