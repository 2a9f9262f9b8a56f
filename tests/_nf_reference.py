"""An independent functional reference of DeepMind's NFNet, NF-ResNet and NF-RegNet equations
(their haiku release in google-deepmind/deepmind-research, nfnets/, and the papers), evaluated from
a state dict in timm's ``dm_nfnet`` key layout, and the parameter counts of DeepMind's
definitions computed from their variant tables. Used only by the tests."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GAMMA = {"gelu_tanh": 1.7015043497085571, "relu": 1.7139588594436646, "silu": 1.7881293296813965}
ACT = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh") * GAMMA["gelu_tanh"],
    "relu": lambda x: F.relu(x) * GAMMA["relu"],
    "silu": lambda x: F.silu(x) * GAMMA["silu"],
}

# base.py's variant tables (width and depth per stage) as DeepMind wrote them.
NFNET_PARAMS = {
    "F0": ([256, 512, 1536, 1536], [1, 2, 6, 3]), "F1": ([256, 512, 1536, 1536], [2, 4, 12, 6]),
    "F2": ([256, 512, 1536, 1536], [3, 6, 18, 9]), "F3": ([256, 512, 1536, 1536], [4, 8, 24, 12]),
    "F4": ([256, 512, 1536, 1536], [5, 10, 30, 15]), "F5": ([256, 512, 1536, 1536], [6, 12, 36, 18]),
    "F6": ([256, 512, 1536, 1536], [7, 14, 42, 21]), "F7": ([256, 512, 1536, 1536], [8, 16, 48, 24]),
}
NFNET_PARAMS |= {f"{k}+": ([384, 768, 2048, 2048], depth) for k, (_, depth) in NFNET_PARAMS.items()}
NF_REGNET_PARAMS = {
    "B0": ([48, 104, 208, 440], [1, 3, 6, 6]), "B1": ([48, 104, 208, 440], [2, 4, 7, 7]),
    "B2": ([56, 112, 232, 488], [2, 4, 8, 8]), "B3": ([56, 128, 248, 528], [2, 5, 9, 9]),
    "B4": ([64, 144, 288, 616], [2, 6, 11, 11]), "B5": ([80, 168, 336, 704], [3, 7, 14, 14]),
    "B6": ([88, 184, 376, 792], [3, 8, 16, 16]), "B7": ([96, 208, 416, 880], [4, 10, 19, 19]),
    "B8": ([104, 232, 456, 968], [4, 11, 22, 22]),
}


def _ws_conv_params(k, cin, cout, groups=1):
    """haiku WSConv2D: w (k, k, cin // groups, cout), gain and bias (cout each)."""
    return k * k * (cin // groups) * cout + 2 * cout


def _se_params(chs, ratio=0.5):
    hidden = max(1, int(chs * ratio))
    return chs * hidden + hidden + hidden * chs + chs


def _block_params(in_ch, out_ch, stride, width, group_size, two_convs, se_ch):
    """One NFBlock of nfnet.py / nf_regnet.py: width rounded to groups; 1x1, 3x3 grouped
    [, 3x3 grouped], 1x1, optional shortcut, SE and the skip gain."""
    groups = width // group_size
    width = group_size * groups
    n = _ws_conv_params(1, in_ch, width) + _ws_conv_params(3, width, width, groups) * (2 if two_convs else 1)
    n += _ws_conv_params(1, width, out_ch) + _se_params(width if se_ch == "width" else out_ch) + 1
    if stride > 1 or in_ch != out_ch:
        n += _ws_conv_params(1, in_ch, out_ch)
    return n


def nfnet_param_count(variant, num_classes=1000):
    """Parameters of nfnet.py's NFNet(variant) with its defaults (expansion 0.5, group width 128,
    big_width, two 3x3 convs, final_conv_mult 2)."""
    widths, depths = NFNET_PARAMS[variant]
    ch = widths[0] // 2
    n = sum(_ws_conv_params(3, cin, cout) for cin, cout in zip([3, 16, 32, 64], [16, 32, 64, ch]))
    for width, depth, stride in zip(widths, depths, [1, 2, 2, 2]):
        for i in range(depth):
            n += _block_params(ch, width, stride if i == 0 else 1, int(width * 0.5), 128, True, "out")
            ch = width
    n += _ws_conv_params(1, ch, 2 * ch)
    return n + 2 * ch * num_classes + num_classes


def nf_regnet_param_count(variant, num_classes=1000):
    """Parameters of nf_regnet.py's NF_RegNet(variant) with its defaults (width 0.75, expansion
    2.25, 1 for the first block, group size 8, SE ratio 0.5, final conv 1280 * ch // 440)."""
    widths, depths = NF_REGNET_PARAMS[variant]
    ch = int(widths[0] * 0.75)
    n, index = _ws_conv_params(3, 3, ch), 0
    for width, depth in zip(widths, depths):
        for i in range(depth):
            out_ch = int(width * 0.75)
            expansion = 1 if index == 0 else 2.25
            n += _block_params(ch, out_ch, 2 if i == 0 else 1, int(ch * expansion), 8, False, "width")
            ch, index = out_ch, index + 1
    final = int(1280 * ch // 440)
    return n + _ws_conv_params(1, ch, final) + final * num_classes + num_classes


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
        out = squeeze_excite(out, sd, p + ".attn_last")
    out = out * sd[p + ".skipinit_gain"]
    return out * alpha + shortcut


def squeeze_excite(out, sd, name):
    """base.SqueezeExcite as both blocks apply it: ``2 * sigmoid(fc1(relu(fc0(mean(out))))) * out``."""
    h = out.mean((2, 3))
    h = F.relu(h @ sd[name + ".fc1.weight"].flatten(1).T + sd[name + ".fc1.bias"])
    h = torch.sigmoid(h @ sd[name + ".fc2.weight"].flatten(1).T + sd[name + ".fc2.bias"])
    return 2 * h[:, :, None, None] * out


def regnet_block(x, sd, p, stride, beta, alpha=0.2):
    """nf_regnet.py's NFBlock: 1x1 -> act -> 3x3 grouped (strided) -> SE -> act -> 1x1; the
    shortcut avg-pools and projects when strided, projects when the width changes."""
    act = ACT["silu"]
    out = act(x) * beta
    if stride > 1:
        shortcut = ws_conv(avg_pool_same(out), sd, p + ".downsample.conv")
    elif x.shape[1] != sd[p + ".conv3.weight"].shape[0]:
        shortcut = ws_conv(out, sd, p + ".downsample.conv")
    else:
        shortcut = x
    out = ws_conv(out, sd, p + ".conv1")
    out = ws_conv(act(out), sd, p + ".conv2", stride)
    out = squeeze_excite(out, sd, p + ".attn")
    out = ws_conv(act(out), sd, p + ".conv3")
    return out * sd[p + ".skipinit_gain"] * alpha + shortcut


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


def nf_regnet_logits(x, sd, depths):
    """DeepMind's NF-RegNet forward (eval mode): 3x3/2 conv, blocks (every stage strided), final
    conv, head."""
    x = ws_conv(x, sd, "stem.conv", 2)
    bs = iter(betas(depths))
    for s, depth in enumerate(depths):
        for i in range(depth):
            x = regnet_block(x, sd, f"stages.{s}.{i}", 2 if i == 0 else 1, next(bs))
    return _head(ws_conv(x, sd, "final_conv"), sd, ACT["silu"])


def _body_head(x, sd, depths, act, nfnet):
    bs = iter(betas(depths))
    for s, depth in enumerate(depths):
        for i in range(depth):
            x = block(x, sd, f"stages.{s}.{i}", 2 if s > 0 and i == 0 else 1, next(bs), act, nfnet, project=i == 0)
    if nfnet:  # NFNet's final 1x1 conv; NF-ResNet has none
        x = ws_conv(x, sd, "final_conv")
    return _head(x, sd, act)


def _head(x, sd, act):
    pooled = act(x).mean((2, 3))
    return pooled @ sd["head.fc.weight"].T + sd["head.fc.bias"]
