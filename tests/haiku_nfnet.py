"""Test helpers: DeepMind NFNet parameters in the release's Haiku layout, and a numpy forward
pass computed directly from them (NHWC activations, HWIO convs, (in, out) linears).

Written from DeepMind's definition (nfnets/nfnet.py and nfnets/base.py of
google-deepmind/deepmind-research), independently of nfzoo's conversion.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = "NFNet/~/"
STEM_WIDTHS = (16, 32, 64, 128)
STEM_STRIDES = (2, 1, 1, 2)
STAGE_STRIDES = (1, 2, 2, 2)
ALPHA = 0.2
GELU_GAMMA = 1.7015043497085571


def block_name(index: int) -> str:
    return "nf_block" if index == 0 else f"nf_block_{index}"


def make_tree(depths, widths=(256, 512, 1536, 1536), group_width=128, num_classes=1000, seed=0):
    """Random parameters with the names, shapes and HWIO/(in, out) layouts of DeepMind's release."""
    rng = np.random.default_rng(seed)

    def conv(k, cin, cout, groups=1):
        return {"w": (rng.random((k, k, cin // groups, cout), dtype=np.float32) - 0.5) * np.float32(3.4641),
                "gain": (1 + 0.1 * rng.standard_normal(cout)).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(cout)).astype(np.float32)}

    def linear(cin, cout):
        return {"w": (rng.standard_normal((cin, cout)) / math.sqrt(cin)).astype(np.float32),
                "b": (0.1 * rng.standard_normal(cout)).astype(np.float32)}

    tree, cin = {}, 3
    for i, w in enumerate(STEM_WIDTHS):
        tree[f"{ROOT}stem_conv{i}"] = conv(3, cin, w)
        cin = w
    index = 0
    for depth, cout, stride in zip(depths, widths, STAGE_STRIDES):
        for j in range(depth):
            name, width = f"{ROOT}{block_name(index)}", int(cout * 0.5)
            groups = width // group_width
            tree[name] = {"skip_gain": np.asarray(rng.uniform(0.5, 1.0), dtype=np.float32)}
            tree[f"{name}/~/conv0"] = conv(1, cin, width)
            tree[f"{name}/~/conv1"] = conv(3, width, width, groups)
            tree[f"{name}/~/conv1b"] = conv(3, width, width, groups)
            tree[f"{name}/~/conv2"] = conv(1, width, cout)
            if j == 0 and (stride > 1 or cin != cout):
                tree[f"{name}/~/conv_shortcut"] = conv(1, cin, cout)
            tree[f"{name}/~/squeeze_excite/~/linear"] = linear(cout, int(cout * 0.5))
            tree[f"{name}/~/squeeze_excite/~/linear_1"] = linear(int(cout * 0.5), cout)
            cin, index = cout, index + 1
    tree[f"{ROOT}final_conv"] = conv(1, cin, 2 * cin)
    tree[f"{ROOT}linear"] = linear(2 * cin, num_classes)
    return tree


def write_pickle(tree, path, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(tree, f, protocol=protocol)


def _same_pad(size, k, stride):
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _ws_conv(x, p, stride=1, groups=1):
    w = p["w"].astype(np.float64)
    kh, kw, ci, co = w.shape
    mean = w.mean(axis=(0, 1, 2))
    var = w.var(axis=(0, 1, 2))
    scale = p["gain"] * (1 / np.sqrt(np.maximum(var * kh * kw * ci, 1e-4)))
    w = (w - mean) * scale
    x = np.pad(x, ((0, 0), _same_pad(x.shape[1], kh, stride), _same_pad(x.shape[2], kw, stride), (0, 0)))
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    n, ho, wo = win.shape[:3]
    win = win.reshape(n, ho, wo, groups, ci, kh, kw)
    out = np.einsum("nhwgcij,ijcgo->nhwgo", win, w.reshape(kh, kw, ci, groups, co // groups))
    return out.reshape(n, ho, wo, co) + p["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_forward(tree, images_nchw, depths, group_width=128, act=gelu_tanh):
    """Logits of DeepMind's NFNet (eval mode) computed from the Haiku tree."""
    def a(x):
        return act(x) * GELU_GAMMA

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    x = images_nchw.transpose(0, 2, 3, 1).astype(np.float64)
    for i, stride in enumerate(STEM_STRIDES):
        x = _ws_conv(x, tree[f"{ROOT}stem_conv{i}"], stride)
        if i < 3:
            x = a(x)
    index, expected_std = 0, 1.0
    for depth, stage_stride in zip(depths, STAGE_STRIDES):
        for j in range(depth):
            name = f"{ROOT}{block_name(index)}"
            stride = stage_stride if j == 0 else 1
            out = a(x) / expected_std
            shortcut = x
            if f"{name}/~/conv_shortcut" in tree:
                pooled = out
                if stride > 1:  # 2x2 average pool, stride 2 (sizes are even in these tests)
                    n, h, w, c = out.shape
                    pooled = out.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
                shortcut = _ws_conv(pooled, tree[f"{name}/~/conv_shortcut"])
            width = tree[f"{name}/~/conv0"]["w"].shape[-1]
            groups = width // group_width
            r = a(_ws_conv(out, tree[f"{name}/~/conv0"]))
            r = a(_ws_conv(r, tree[f"{name}/~/conv1"], stride, groups))
            r = a(_ws_conv(r, tree[f"{name}/~/conv1b"], 1, groups))
            r = _ws_conv(r, tree[f"{name}/~/conv2"])
            fc1, fc2 = tree[f"{name}/~/squeeze_excite/~/linear"], tree[f"{name}/~/squeeze_excite/~/linear_1"]
            h = np.maximum(r.mean(axis=(1, 2)) @ fc1["w"] + fc1["b"], 0)
            r = 2 * sigmoid(h @ fc2["w"] + fc2["b"])[:, None, None] * r
            x = r * tree[name]["skip_gain"] * ALPHA + shortcut
            if j == 0:
                expected_std = 1.0
            expected_std = math.sqrt(expected_std ** 2 + ALPHA ** 2)
            index += 1
    x = a(_ws_conv(x, tree[f"{ROOT}final_conv"])).mean(axis=(1, 2))
    head = tree[f"{ROOT}linear"]
    return x @ head["w"] + head["b"]
