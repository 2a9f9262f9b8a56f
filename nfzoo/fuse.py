"""The explicit inference step: fold what is constant at inference into plain convolutions.

A zoo model computes what its paper defines on every call, in training and in eval: each
weight-standardized conv standardizes its weight, each activation multiplies by its gamma.
``fuse(model)``, like timm's ``reparameterize_model``, returns a copy that computes the same
function (to float round-off) with less work:

* every weight-standardized conv of the zoo (:class:`~nfzoo.layers.ScaledStdConv2d`,
  :class:`~nfzoo.layers.WSConv2d` and its 1d/3d siblings) becomes a plain ``nn.Conv1d/2d/3d``
  holding the standardized weight;
* each NFNet / NF-ResNet / NF-RegNet block becomes a :class:`FusedNFBlock`, with the
  activations' gammas, the block's beta, alpha, the skip gain and the squeeze-excite's factor 2
  folded into its convs and its residual add;
* in a stem (an ``nn.Sequential``), a gamma-scaled activation followed by a conv hands its gamma
  to the conv's weight;
* every ``nn.GELU`` becomes an :class:`InferenceGELU`, the same values by torch's faster CPU routes.

Each of these folds is defined here, once, and :func:`fuse` applies them in one walk over the
model, each to a module whose children are already fused.

The result runs without weight arithmetic, exports to ONNX and TorchScript, compiles with
``torch.compile`` in one graph and traces with ``torch.fx``. Its 2-d convs hold
``channels_last`` weights unless told otherwise (see :func:`fuse`); its ``state_dict`` gives them
contiguous, so timm's ``save_for_hf`` (safetensors) saves it. Its state dict has the fused model's
keys: it loads into a fused model (``fuse(timm.create_model(...)).load_state_dict(...)``), not
into the model as built. It is for inference:
training it would train the folded weights directly, without stochastic depth.

TensorFlow-style SAME padding of a strided conv depends on the input size. Given
``input_size``, ``fuse`` resolves it once for that size (:class:`PaddedConv2d`): a symmetric
padding becomes the conv's own padding, an asymmetric one a fixed zero pad. Such a model is
exact at that size only, and refuses any other with an :class:`InputSizeError` naming both
sizes (the padding would be wrong, and with it the logits). Without ``input_size``, such convs
compute their padding per input (:class:`SamePadConv2d`) and the model serves any size.

An ONNX export (``torch.onnx.export``, its default ``dynamo=True`` exporter) of a model fused for
one size is valid at that size only: the exported graph declares that input size, even where
dynamic height and width are asked for (the size check pins them), and onnxruntime refuses any
other. Export a model fused without ``input_size`` for inputs of varying size. The legacy
exporter (``dynamo=False``) traces the check away: with its ``dynamic_axes`` a size-fused graph
would run at other sizes with the wrong padding, so do not combine the two.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.padding import get_same_padding, pad_same

from .errors import NfzooError
from .layers.activations import GammaAct
from .layers.std_conv import is_weight_standardized
from .models.nfnet import NFBlock

__all__ = ["fuse", "FusedNFBlock", "inference_gelu", "InferenceGELU", "InputSizeError", "PaddedConv2d",
           "SamePadConv2d"]

torch.fx.wrap("pad_same")  # one node in a trace: the padding depends on the input's size


@torch.fx.wrap  # a traced fused model records one call here, not the routes' control flow
def inference_gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``F.gelu(x, approximate=approximate)`` by the faster of torch's CPU routes, to float
    round-off the same values (see docs/speed.md):

    * erf GELU: torch runs a contiguous float input through oneDNN's kernel and a channels_last
      one through its own, slower one; a float32 channels_last input goes in as its
      NHWC permutation, which is contiguous (the same memory, nothing copied). Half-precision
      inputs keep torch's route: on AVX-512 oneDNN's bfloat16 GELU rounds differently from it.
    * tanh GELU (DeepMind's): ``x * sigmoid(2u)`` in four passes over one fresh tensor, in place,
      is faster than torch's tanh GELU kernel. Where autograd records the call, the plain
      GELU runs instead: its in-place passes would overwrite what the backward needs. So it does
      for half-precision inputs, which four roundings instead of one would make less exact.

    On other devices it is ``F.gelu``.
    """
    if x.device.type != "cpu":
        return F.gelu(x, approximate=approximate)
    if approximate == "tanh":
        if (torch.is_grad_enabled() and x.requires_grad) or x.dtype not in (torch.float32, torch.float64):
            return F.gelu(x, approximate="tanh")
        # 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u), with 2u = x * (k + k * 0.044715 * x**2)
        k = 2.0 * math.sqrt(2.0 / math.pi)
        two_u = torch.addcmul(x.new_full((), k), x, x, value=k * 0.044715).mul_(x)
        return two_u.sigmoid_().mul_(x)
    if (x.dtype == torch.float32 and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


class InferenceGELU(nn.GELU):
    """``nn.GELU`` computed by :func:`inference_gelu`: what :func:`fuse` puts in its place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return inference_gelu(x, self.approximate)


class InputSizeError(NfzooError, ValueError):
    """An input of another spatial size than the one a model was fused for."""


@torch.fx.wrap  # one node in a trace, so that a traced fused model checks its inputs too
def check_fused_size(x: torch.Tensor, expected: Tuple[int, int], fused_for: Tuple[int, int]) -> None:
    """Refuse ``x`` unless its spatial size is ``expected``: the size a conv of a model fused for
    ``fused_for`` (H, W) inputs had its SAME padding resolved for."""
    if x.shape[-2] != expected[0] or x.shape[-1] != expected[1]:
        raise InputSizeError(
            f"got {x.shape[-2]}x{x.shape[-1]} px where a model fused for {fused_for[0]}x{fused_for[1]} px "
            f"inputs expects {expected[0]}x{expected[1]} px (its SAME padding is resolved for that size): "
            "call nfzoo.fuse again with input_size=(C, H, W) of these inputs, or without input_size "
            "to pad every input as it comes")


class PaddedConv2d(nn.Conv2d):
    """Conv2d after TensorFlow SAME padding resolved for one input size: ``pad`` is the zero padding
    ``(left, right, top, bottom)`` applied before the conv when it is asymmetric, None when it is
    symmetric and the conv's own ``padding``. An input of any other size than ``in_size`` (what
    the model's ``fused_for`` input size gives here) is refused with an :class:`InputSizeError`.
    """

    def __init__(self, *args, in_size: Sequence[int], fused_for: Sequence[int],
                 pad: Sequence[int], **kwargs):
        left, right, top, bottom = pad
        symmetric = (left, top) == (right, bottom)
        super().__init__(*args, padding=(top, left) if symmetric else 0, **kwargs)
        self.in_size = (int(in_size[0]), int(in_size[1]))
        self.fused_for = (int(fused_for[0]), int(fused_for[1]))
        self.pad: Optional[Tuple[int, int, int, int]] = None if symmetric else (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_fused_size(x, self.in_size, self.fused_for)
        pad = self.pad  # a local, which TorchScript can refine
        if pad is not None:
            x = F.pad(x, pad)
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", in_size={self.in_size}, pad={self.pad}"


class SamePadConv2d(nn.Conv2d):
    """Conv2d after TensorFlow SAME zero padding, computed for each input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(pad_same(x, self.kernel_size, self.stride, self.dilation), self.weight, self.bias)


def _same_pad(conv: nn.Conv2d, in_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """TensorFlow SAME padding (left, right, top, bottom) of ``conv`` for an input of size in_hw."""
    ph, pw = (get_same_padding(x, k, s, d)
              for x, k, s, d in zip(in_hw, conv.kernel_size, conv.stride, conv.dilation))
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def _plain_conv(conv: nn.Module, in_hw: Sequence[int] | None, fused_for: Sequence[int] | None) -> nn.Module:
    """A plain conv equal to the weight-standardized ``conv``: for inputs of size in_hw (what the
    model's input size fused_for gives it) where its SAME padding depends on the input size."""
    base = next(c for c in type(conv).__mro__ if c in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    kwargs = dict(
        in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype)
    if getattr(conv, "dynamic_same_pad", False):
        if in_hw is None or fused_for is None:
            base = SamePadConv2d  # its padding is 0 (get_padding_value's answer for dynamic SAME)
        else:
            base = PaddedConv2d
            del kwargs["padding"]
            kwargs.update(in_size=in_hw, fused_for=fused_for, pad=_same_pad(conv, in_hw))
    plain = base(**kwargs)
    if conv.weight.dim() == 4 and conv.weight.is_contiguous(memory_format=torch.channels_last):
        plain = plain.to(memory_format=torch.channels_last)  # as model.to(memory_format=...) left it
    with torch.no_grad():
        plain.weight.copy_(conv.standardized_weight())
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain.train(conv.training)


class FusedNFBlock(nn.Module):
    """An :class:`~nfzoo.models.nfnet.NFBlock` for inference, made by :func:`fuse`: the same function of ``x``
    with every constant factor folded into the convs, in fewer passes over the activations.

    ``conv(gamma * g(x)) == conv_with(gamma * W)(g(x))``, so each activation's gamma (and the
    block's beta) moves into the weight of the conv that reads it (the average pool of the
    projection shortcut is linear, so the factor passes through it); alpha, the skip gain and
    the squeeze-excite's 2 become one per-channel scale of the residual branch, applied by the
    residual add itself. Stochastic depth is the identity at inference and is dropped. A
    squeeze-excite inside the branch (NF-RegNet's ``attn``) is kept as it is.
    """

    def __init__(self, block: NFBlock):
        super().__init__()
        if not all(isinstance(c, nn.Conv2d) and not hasattr(c, "gain")
                   for c in (block.conv1, block.conv2, block.conv3)):
            raise TypeError("FusedNFBlock takes a block whose convs are already plain (nfzoo.fuse makes them)")
        gamma = block.act.gamma
        self.act = block.act.act
        self.downsample, self.conv1, self.conv2 = block.downsample, block.conv1, block.conv2
        self.conv2b, self.conv3, self.attn_last = block.conv2b, block.conv3, block.attn_last
        self.attn = block.attn
        with torch.no_grad():
            for conv, scale in ((self.conv1, gamma * block.beta), (self.conv2, gamma), (self.conv2b, gamma),
                                (self.conv3, gamma), (getattr(self.downsample, "conv", None), gamma * block.beta)):
                if conv is not None:
                    conv.weight.mul_(scale)
            residual_scale = block.skipinit_gain.detach() * block.alpha * (2.0 if self.attn_last is not None else 1.0)
        self.register_buffer("residual_scale", residual_scale.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(x)
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv2(self.act(self.conv1(out)))
        if self.conv2b is not None:
            out = self.conv2b(self.act(out))
        if self.attn is not None:
            out = self.attn(out)
        out = self.conv3(self.act(out))
        scale = self.residual_scale
        if self.attn_last is not None:
            scale = torch.sigmoid(self.attn_last.logits(out)) * scale
        return torch.addcmul(shortcut, out, scale.to(out.dtype))


def _fold_gammas(seq: nn.Sequential) -> None:
    """In ``seq``, hand each gamma-scaled activation's gamma to the plain conv after it."""
    layers = list(seq.named_children())
    for (name, layer), (_, after) in zip(layers, layers[1:]):
        if isinstance(layer, GammaAct) and isinstance(after, nn.Conv2d) and not is_weight_standardized(after):
            with torch.no_grad():
                after.weight.mul_(layer.gamma)
            setattr(seq, name, layer.act)


def _input_sizes(model: nn.Module, input_size: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Spatial input size of every SAME-padded weight-standardized conv, for one forward pass
    of an input of ``input_size`` (C, H, W)."""
    sizes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            sizes.setdefault(name, tuple(args[0].shape[2:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(name))
             for name, m in model.named_modules() if getattr(m, "dynamic_same_pad", False)]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _fuse_children(module: nn.Module, path: str, in_sizes: dict[str, tuple[int, ...]],
                   fused_for: Sequence[int] | None) -> None:
    """Replace each child of ``module`` (named ``path``) by its fused form, the child's own children
    first: a WS conv by a plain conv, an :class:`NFBlock` by a :class:`FusedNFBlock`, an
    ``nn.GELU`` by an :class:`InferenceGELU`; in an ``nn.Sequential``, a gamma-scaled activation
    hands its gamma to the plain conv after it."""
    for name, child in list(module.named_children()):
        child_path = f"{path}.{name}" if path else name
        if is_weight_standardized(child):
            setattr(module, name, _plain_conv(child, in_sizes.get(child_path), fused_for))
            continue
        _fuse_children(child, child_path, in_sizes, fused_for)
        if isinstance(child, NFBlock):
            setattr(module, name, FusedNFBlock(child).train(child.training))
        elif type(child) is nn.GELU:
            setattr(module, name, InferenceGELU(child.approximate))
    if isinstance(module, nn.Sequential):
        _fold_gammas(module)


def fuse(model: nn.Module, input_size: Sequence[int] | None = None, inplace: bool = False,
         memory_format: torch.memory_format | None = torch.channels_last) -> nn.Module:
    """Replace every weight-standardized conv of ``model`` by a plain conv with the standardized
    weight baked in; returns the fused model (a copy unless ``inplace``).

    Args:
        input_size: ``(C, H, W)`` of the inputs the fused model will see (e.g. the model's
            ``pretrained_cfg['input_size']``); lets SAME padding be resolved statically. The
            fused model then computes the right logits at exactly that spatial size and refuses
            any other with an :class:`InputSizeError` (so does a traced or scripted copy; an
            ONNX export is valid at that size only, see the module docstring). Without it, the
            fused model serves every input size.
        inplace: modify ``model`` itself instead of a deep copy.
        memory_format: the layout of every 2-d conv weight of the fused model. The default,
            ``torch.channels_last``, is the faster one for NFNets on CPU (oneDNN convolves NHWC
            activations without converting them around each conv; see docs/speed.md) and with
            cuDNN under bf16.
            Inputs may stay NCHW: a conv with a ``channels_last`` weight returns a
            ``channels_last`` output whatever its input's layout, so the feature maps are NHWC
            from the first conv on (same shapes and values). ``None`` keeps each weight's
            current layout.
    """
    in_sizes = _input_sizes(model, input_size) if input_size is not None else {}
    fused_for = tuple(input_size[-2:]) if input_size is not None else None
    if not inplace:
        model = copy.deepcopy(model)
    _fuse_children(model, "", in_sizes, fused_for)
    if memory_format is not None:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=memory_format)
        model.register_state_dict_post_hook(_contiguous_state)
    return model


def _contiguous_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook of a fused model: its tensors contiguous (a ``channels_last`` weight is
    not), as safetensors requires (timm's ``save_for_hf(..., safe_serialization=True)``);
    ``load_state_dict`` copies them back into the ``channels_last`` parameters. With
    ``keep_vars=True`` the parameters themselves are returned, as they are."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and not isinstance(value, nn.Parameter) and not value.is_contiguous():
            state_dict[key] = value.contiguous()
