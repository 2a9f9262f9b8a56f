"""Inference fast path of the weight-standardized convs, and nfzoo.fuse for export."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import nfzoo
from nfzoo.fuse import PaddedConv2d
from nfzoo.layers import ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d
from nfzoo.layers.std_conv import is_weight_standardized


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


# the cached path convolves with oneDNN directly on the CPU, summing in another order than F.conv2d
CACHED = dict(rtol=1e-5, atol=1e-6)


def reference(model, x):
    """The training path: standardized weights recomputed, nothing cached."""
    with torch.enable_grad():
        return model(x).detach()


def count_standardizations(monkeypatch):
    calls = []
    for cls in (ScaledStdConv2d, WSConv2d):
        original = cls.standardized_weight
        monkeypatch.setattr(cls, "standardized_weight", lambda self, o=original: calls.append(self) or o(self))
    return calls


def test_fast_path_reuses_weights_and_matches(model, monkeypatch):
    x = torch.randn(2, 3, 17, 16)
    expected = reference(model, x)
    calls = count_standardizations(monkeypatch)
    with torch.no_grad():
        first = model(x)
        assert len(calls) == 4
        second = model(x)
    with torch.inference_mode():
        third = model(x)
    assert len(calls) == 4  # computed once, reused
    for out in (first, second, third):
        torch.testing.assert_close(out, expected, **CACHED)
    reference(model, x)
    model.train()
    with torch.no_grad():
        model(x)
    assert len(calls) == 12  # grad enabled or training: always recomputed


def test_packed_weights_follow_the_input_shape_and_step_aside(model):
    """On the CPU the cache holds oneDNN-packed weights, repacked for a new input shape; autocast,
    dispatch modes (a FLOP counter) and ``torch.backends.mkldnn`` switched off get aten convs."""
    model.train().eval()
    for hw in ((16, 16), (17, 15), (16, 16)):
        x = torch.randn(3, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(model, x), **CACHED)
        assert model.conv._inference_weight[1].is_mkldnn
        assert model.conv._inference_weight[0][-1] == (8, (hw[0] + 1) // 2, (hw[1] + 1) // 2)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(x)
    assert flops.get_total_flops() > 0 and not model.conv._inference_weight[1].is_mkldnn
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(model(x), reference(model, x), rtol=0, atol=0)
    assert not model.conv._inference_weight[1].is_mkldnn


def test_cache_invalidated_by_optimizer_step(model):
    x = torch.randn(2, 3, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with torch.no_grad():
        before = model(x)
    # one training step without leaving eval mode (e.g. a frozen-statistics fine-tune)
    model(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, reference(model, x), **CACHED)
    # the usual loop: train() / step / eval()
    model.train()
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model, x), **CACHED)
    # weights replaced by load_state_dict
    state = {k: v + 0.1 for k, v in model.state_dict().items()}
    with torch.no_grad():
        stale = model(x)
    model.load_state_dict(state)
    with torch.no_grad():
        fresh = model(x)
    assert not torch.allclose(fresh, stale, atol=1e-3)
    torch.testing.assert_close(fresh, reference(model, x), **CACHED)


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
    assert type(odd.stem) is nn.Conv2d and odd.stem.padding == (1, 1)


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


def reference_scaled_ws(w, gain, numerics, eps):
    """REFERENCE.md §1 in plain autograd ops (population variance over the fan-in)."""
    flat = w.flatten(1)
    var, mean = torch.var_mean(flat, 1, correction=0, keepdim=True)
    n = flat.shape[1]
    scale = torch.rsqrt(torch.clamp(var * n, min=eps)) if numerics == "deepmind" else torch.rsqrt(var + eps) * n**-0.5
    return ((flat - mean) * scale * gain.view(-1, 1)).view_as(w)


@pytest.mark.parametrize("numerics", ["deepmind", "timm"])
def test_scaled_ws_memory_lean_backward_is_exact(numerics):
    """The training path's analytic backward equals autograd through the formula, including a
    filter whose variance DeepMind's rule clamps (its scale is then a constant)."""
    conv = ScaledStdConv2d(3, 6, 3, numerics=numerics).double()
    with torch.no_grad():
        conv.weight[2] = 0.7 + 1e-4 * torch.randn(3, 3, 3, dtype=torch.float64)
        conv.gain.copy_(torch.randn_like(conv.gain))
    w, gain = conv.weight, conv.gain
    # gradcheck perturbs w and gain in place, i.e. the conv's own parameters
    assert torch.autograd.gradcheck(lambda *_: conv.standardized_weight(), (w, gain))
    upstream = torch.randn_like(w)
    ours = torch.autograd.grad((conv.standardized_weight() * upstream).sum(), (w, gain))
    ref = torch.autograd.grad((reference_scaled_ws(w, gain, numerics, conv.eps) * upstream).sum(), (w, gain))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@torch.no_grad()
def shift_parameters(model, suffixes, noise):
    """Move the parameters named ``*suffix`` away from their init by ``0.5 * noise(p)``."""
    for name, p in model.named_parameters():
        if name.endswith(suffixes):
            p.add_(noise(p) * 0.5)


def test_nfnet_f0_fast_path_and_fuse():
    """On the real network: cached inference and the fused model give the training path's logits."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("nfnet_f0", num_classes=10)
    shift_parameters(model, ("skipinit_gain", "gain"), torch.rand_like)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    expected = reference(model, x)
    fused = nfzoo.fuse(model, input_size=(3, 64, 64))
    with torch.no_grad():
        for out in (model(x), fused(x)):
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant, kwargs", [
    # NFNet blocks: transition shortcut, extra conv, squeeze-excite
    ("nfnet_f0", dict(depths=(1, 2, 1, 1), widths=(32, 64, 64, 64), stem_width=16, group_width=16)),
    # NF-ResNet blocks: ReLU, no SE, no extra conv, strided-conv shortcut
    ("dm_nf_resnet152", dict(depths=(1, 2, 1, 1), widths=(32, 64, 64, 64), stem_width=16)),
])
def test_nfnet_folded_inference_equals_training_path(variant, kwargs, monkeypatch):
    """Eval-mode inference folds gamma, beta, alpha and the skip gain out of the activations;
    the logits stay those of the unfolded (training) path."""
    import timm

    from nfzoo.models.nfnet import NFBlock

    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=10, drop_path_rate=0.2, **kwargs)
    shift_parameters(model, ("gain", "bias"), torch.randn_like)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = reference(model, x)
    folded = []
    original = NFBlock._forward_folded
    monkeypatch.setattr(NFBlock, "_forward_folded", lambda self, x: folded.append(self) or original(self, x))
    with torch.inference_mode():
        first, second = model(x), model(x)  # second: from the cached, scaled weights
        with torch.backends.mkldnn.flags(enabled=False):  # activations in place instead of oneDNN post-ops
            third = model(x)
    assert len(folded) == 3 * sum(kwargs["depths"])
    for out in (first, second, third):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    model.train()
    with torch.no_grad():
        model(x)
    assert len(folded) == 3 * sum(kwargs["depths"])  # training never folds


def test_copies_leave_the_cache_behind(model):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    assert "_inference_weight" in model.conv.__dict__
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_inference_weight" not in clone.conv.__dict__
        with torch.no_grad():
            torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
