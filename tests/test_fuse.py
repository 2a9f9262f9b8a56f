"""The explicit inference step nfzoo.fuse, and the one forward of the weight-standardized convs."""
import pytest
import torch
import torch.nn as nn
from _nf_reference import nfnet_logits, nf_resnet_logits

import nfzoo
from nfzoo.fuse import InferenceGELU, InputSizeError, PaddedConv2d
from nfzoo.layers import GammaAct, ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d
from nfzoo.layers.std_conv import is_weight_standardized
from nfzoo.fuse import FusedNFBlock


class TinyWS(nn.Module):
    """Every kind of WS conv the zoo has in a 2D net: dynamic and static SAME, grouped, Qiao WS."""

    def __init__(self):
        super().__init__()
        self.stem = ScaledStdConv2d(3, 8, 3, stride=2, padding="same")
        self.conv = ScaledStdConv2d(8, 16, 3, padding="same", numerics="timm")
        self.grouped = ScaledStdConv2d(16, 16, 3, stride=2, padding="same", groups=4)
        self.ws = WSConv2d(16, 16, 1, eps_in="var")
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.add_(torch.randn_like(p) * 0.3)  # gains and biases away from their init

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = self.ws(torch.relu(self.grouped(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyWS().eval()


def reference(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("hw", [(16, 16), (17, 15)])
def test_fuse_matches(model, hw):
    x = torch.randn(2, 3, *hw)
    expected = reference(model, x)
    for fused in (nfzoo.fuse(model), nfzoo.fuse(model, input_size=(3, *hw))):
        assert not any(is_weight_standardized(m) for m in fused.modules())
        with torch.no_grad():
            torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5)
    assert any(is_weight_standardized(m) for m in model.modules())  # the original is untouched


def test_fuse_resolves_same_padding_statically(model):
    even = nfzoo.fuse(model, input_size=(3, 16, 16))
    assert type(even.stem) is PaddedConv2d and even.stem.pad == (0, 1, 0, 1)
    assert type(even.conv) is nn.Conv2d and even.conv.padding == (1, 1)  # stride 1: always static
    odd = nfzoo.fuse(model, input_size=(3, 17, 17))
    assert type(odd.stem) is PaddedConv2d and odd.stem.pad is None and odd.stem.padding == (1, 1)


@pytest.mark.parametrize("conv,shape", [(WSConv1d(4, 6, 3, padding=1), (2, 4, 9)),
                                        (WSConv3d(4, 6, 3, padding=1, bias=False), (1, 4, 5, 6, 7))])
def test_fuse_1d_3d(conv, shape):
    x = torch.randn(shape)
    fused = nfzoo.fuse(nn.Sequential(conv))[0]
    assert type(fused) in (nn.Conv1d, nn.Conv3d)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), conv(x), rtol=0, atol=1e-5)


def test_fused_torchscript(model):
    x = torch.randn(2, 3, 16, 16)
    expected = reference(model, x)
    for fused in (nfzoo.fuse(model), nfzoo.fuse(model, input_size=(3, 16, 16))):
        scripted = torch.jit.script(fused)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-5)


def test_compile_without_graph_breaks(model):
    x = torch.randn(2, 3, 16, 16)
    expected = reference(model, x)
    with torch.no_grad():
        for m in (model, nfzoo.fuse(model), nfzoo.fuse(model, input_size=(3, 16, 16))):
            torch._dynamo.reset()
            assert torch._dynamo.explain(m)(x).graph_break_count == 0
            out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_onnx_export_matches(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 16, 16)
    expected = reference(model, x)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(nfzoo.fuse(model, input_size=(3, 16, 16)), (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=0, atol=1e-5)


def _assert_refuses(runnable, x, fused_hw):
    """``runnable`` (a fused model, or its trace or script) refuses ``x``, naming both sizes."""
    sizes = (f"{x.shape[-2]}x{x.shape[-1]} px", f"{fused_hw[0]}x{fused_hw[1]} px")
    # TorchScript raises its own error class, with the InputSizeError's name and message
    with pytest.raises((InputSizeError, torch.jit.Error), match=f"InputSizeError|{sizes[0]}") as info:
        with torch.no_grad():
            runnable(x)
    assert all(s in str(info.value) for s in sizes)


@pytest.mark.parametrize("size", [29, 31])
def test_model_fused_for_one_size_refuses_another(size):
    """nfnet_mini fused for its 28 px inputs gives its logits at 28 px, and refuses 29 and 31 px
    (where the padding resolved for 28 px would give other logits), as do its trace and script;
    fused without input_size it gives the model's logits at those sizes."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("nfnet_mini").eval()
    fused = nfzoo.fuse(model, input_size=(1, 28, 28))
    x28, x = torch.randn(2, 1, 28, 28), torch.randn(2, 1, size, size)
    torch.testing.assert_close(reference(fused, x28), reference(model, x28), rtol=1e-4, atol=1e-5)
    for runnable in (fused, torch.fx.symbolic_trace(fused), torch.jit.script(fused)):
        _assert_refuses(runnable, x, (28, 28))
    torch.testing.assert_close(reference(nfzoo.fuse(model), x), reference(model, x), rtol=1e-4, atol=1e-5)


def test_f0_shaped_model_fused_for_64_px_refuses_80_px():
    model = _small_nfnet()
    fused = nfzoo.fuse(model, input_size=(3, 64, 64))
    _assert_refuses(fused, torch.randn(1, 3, 80, 80), (64, 64))
    _assert_refuses(fused, torch.randn(1, 3, 64, 65), (64, 64))  # one side is enough


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_export_of_size_fused_model_refuses_other_sizes(model, tmp_path, dynamic):
    """The ONNX graph of a model fused for 16 px computes its logits at 16 px and refuses 17 px,
    even when exported with dynamic height and width: it never runs with the wrong padding."""
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "tiny.onnx"
    dims = ({2: torch.export.Dim("h", min=8, max=64), 3: torch.export.Dim("w", min=8, max=64)},) if dynamic else None
    torch.onnx.export(nfzoo.fuse(model, input_size=(3, 16, 16)), (x,), str(path), dynamo=True, dynamic_shapes=dims)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    torch.testing.assert_close(torch.from_numpy(session.run(None, {name: x.numpy()})[0]), reference(model, x),
                               rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="invalid dimensions"):
        session.run(None, {name: torch.randn(2, 3, 17, 17).numpy()})


@torch.no_grad()
def shift_parameters(model, suffixes, noise):
    """Move the parameters named ``*suffix`` away from their init by ``0.5 * noise(p)``."""
    for name, p in model.named_parameters():
        if name.endswith(suffixes):
            p.add_(noise(p) * 0.5)


@pytest.mark.parametrize("variant, kwargs, reference_logits", [
    # NFNet blocks: transition shortcut, extra conv, squeeze-excite, deep stem with gammas
    ("nfnet_f0", dict(depths=(1, 2, 1, 1), widths=(32, 64, 64, 64), stem_width=16, group_width=16), nfnet_logits),
    # NF-ResNet blocks: ReLU, no SE, no extra conv, strided-conv shortcut, 7x7 stem
    ("dm_nf_resnet152", dict(depths=(1, 2, 1, 1), widths=(32, 64, 64, 64), stem_width=16), nf_resnet_logits),
])
def test_fused_nf_models_equal_deepminds_equations(variant, kwargs, reference_logits):
    """The fused network (gammas, beta, alpha, skip gains and the SE's 2 folded into convs and the
    residual add) gives the logits of an independent functional forward of DeepMind's equations."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=10, drop_path_rate=0.2, **kwargs).double().eval()
    shift_parameters(model, ("gain", "bias"), torch.randn_like)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    expected = reference_logits(x, {k: v.detach() for k, v in model.state_dict().items()}, kwargs["depths"])
    for fused in (nfzoo.fuse(model), nfzoo.fuse(model, input_size=(3, 64, 48))):
        assert sum(isinstance(m, FusedNFBlock) for m in fused.modules()) == sum(kwargs["depths"])
        assert not any(isinstance(m, GammaAct) for m in fused.stem)  # stem gammas handed to the convs
        torch.testing.assert_close(reference(fused, x), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(reference(model, x), expected, rtol=1e-9, atol=1e-9)  # the model is untouched


def _small_nfnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("nfnet_f0", num_classes=10, depths=(1, 1, 1, 1), widths=(32, 64, 64, 64),
                             stem_width=16, group_width=16).eval()


def _spatial_convs(model):
    """The 2-d convs whose layout shows (a 1x1 kernel is NCHW- and NHWC-contiguous at once)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs
    return convs


def test_fuse_makes_channels_last_convs_by_default():
    """Default: channels_last conv weights (the faster layout), for an NCHW model fed NCHW inputs,
    with the same logits and channels_last feature maps."""
    model = _small_nfnet()
    fused = nfzoo.fuse(model, input_size=(3, 64, 64))
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in _spatial_convs(fused))
    assert all(c.weight.is_contiguous() for c in _spatial_convs(model))  # the original keeps its layout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = fused.forward_features(x)
        assert features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


def test_fuse_memory_format_argument():
    """``memory_format`` sets every 2-d conv's layout; ``None`` keeps the model's own (else a
    channels_last model would convert layouts around every conv, or an NCHW one be forced NHWC)."""
    model = _small_nfnet()
    for model_fmt in (torch.channels_last, torch.contiguous_format):
        model = model.to(memory_format=model_fmt)
        for fmt in (torch.channels_last, torch.contiguous_format, None):
            fused = nfzoo.fuse(model, memory_format=fmt)
            assert all(c.weight.is_contiguous(memory_format=fmt or model_fmt) for c in _spatial_convs(fused))


def gelu_from_its_equation(x, approximate):
    """GELU as its paper writes it (Hendrycks & Gimpel 2016), in float64."""
    x = x.double()
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_gelu_values_and_layout(approximate, memory_format, dtype):
    """The fused model's GELU gives GELU's values in the input's layout and leaves its input alone."""
    x = (torch.randn(2, 8, 5, 6, dtype=dtype) * 4).contiguous(memory_format=memory_format)
    before = x.clone()
    gelu = InferenceGELU(approximate)
    for context in (torch.no_grad(), torch.inference_mode()):
        with context:
            out = gelu(x)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.double(), gelu_from_its_equation(x, approximate), **tol)
        assert out.is_contiguous(memory_format=memory_format) and out.dtype == dtype
        assert torch.equal(x, before)
    with torch.no_grad():  # TorchScript runs the same routes
        torch.testing.assert_close(torch.jit.script(gelu)(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_inference_gelu_rounds_half_precision_once(approximate):
    """bfloat16 and float16 get torch's GELU (computed in float32, rounded once), value for value."""
    for dtype in (torch.bfloat16, torch.float16):
        x = (torch.randn(4, 16, 8, 8) * 4).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert torch.equal(InferenceGELU(approximate)(x), torch.nn.functional.gelu(x, approximate=approximate))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_inference_gelu_keeps_autograd(approximate):
    """Where autograd records, the gradient is GELU's (the in-place route would break backward)."""
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    InferenceGELU(approximate)(x1).square().sum().backward()
    torch.nn.functional.gelu(x2, approximate=approximate).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
@pytest.mark.parametrize("input_size", [(3, 64, 64), None])
def test_fused_nfnet_traces_with_fx(numerics, input_size):
    """A fused NFNet traces with plain torch.fx, its GELUs one call each; without input_size its
    SAME pads stay per input, so the trace serves another input size too."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("nfnet_f0", num_classes=10, depths=(1, 1, 1, 1), widths=(32, 64, 64, 64),
                              stem_width=16, group_width=16, numerics=numerics).eval()
    fused = nfzoo.fuse(model, input_size=input_size)
    traced = torch.fx.symbolic_trace(fused)
    gelu_calls = []
    for m in fused.modules():
        if isinstance(m, InferenceGELU):
            m.register_forward_hook(lambda *args: gelu_calls.append(1))
    for hw in [(64, 64)] if input_size else [(64, 64), (65, 47)]:
        x = torch.randn(2, 3, *hw)
        torch.testing.assert_close(reference(traced, x), reference(model, x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(reference(traced, x), reference(fused, x), rtol=0, atol=0)
    nodes = [n for n in traced.graph.nodes if n.op == "call_function" and n.target.__name__ == "inference_gelu"]
    assert len(nodes) == len(gelu_calls) // (1 if input_size else 2) > 0


def test_fused_nfnet_exports_to_onnx(tmp_path):
    """The fused NFNet exports to ONNX with the same logits, its GELUs' in-place route included
    (under no_grad: where autograd records, ``inference_gelu`` is torch's GELU)."""
    import timm

    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = timm.create_model("nfnet_f0", num_classes=10, depths=(1, 1, 1, 1), widths=(32, 64, 64, 64),
                              stem_width=16, group_width=16).eval()
    fused = nfzoo.fuse(model, input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "nfnet.onnx"
    with torch.no_grad():
        torch.onnx.export(fused, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), reference(model, x), rtol=1e-4, atol=1e-5)


def test_fuse_replaces_gelus():
    model = _small_nfnet()
    assert any(type(m) is nn.GELU for m in model.modules())
    fused = nfzoo.fuse(model)
    assert not any(type(m) is nn.GELU for m in fused.modules())
    assert {m.approximate for m in fused.modules() if isinstance(m, InferenceGELU)} == {"tanh"}


@pytest.mark.parametrize("name", ["nfnet_f0", "resnet50_bcn_ws"])
def test_fused_features_and_torchscript(name):
    import timm

    kwargs = dict(depths=(1, 1, 1, 1), widths=(32, 64, 64, 64), stem_width=16, group_width=16) if "nfnet" in name else {}
    torch.manual_seed(0)
    # float64: the fused channels_last convs sum in another order than the NCHW ones, and float32
    # round-off near zero would hide in a loose tolerance what a tight one checks here
    features = timm.create_model(name, features_only=True, **kwargs).eval().double()
    shift_parameters(features, ("gain", "bias"), torch.randn_like)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    fused = nfzoo.fuse(features)
    for a, b in zip(reference(fused, x), reference(features, x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    model = timm.create_model(name, num_classes=5, **kwargs).eval().double()
    torch.testing.assert_close(torch.jit.script(nfzoo.fuse(model))(x), reference(model, x), rtol=1e-9, atol=1e-9)
