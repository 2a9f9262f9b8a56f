"""AGC against an independent, unit-by-unit implementation of the NFNet paper's formula."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn

from nfzoo.optim import adaptive_grad_clip_, attach_agc


def reference_clip(weight: torch.Tensor, grad: torch.Tensor, clip: float, eps: float) -> torch.Tensor:
    """The NFNet paper's AGC (arXiv 2102.06171), one unit at a time. DeepMind's unitwise_norm
    (nfnets/agc_optax.py) squeezes the array first:
    a scalar or vector (after squeezing) is one unit; otherwise a unit is an output channel."""
    squeezed = [s for s in weight.shape if s != 1]
    units = [(...,)] if len(squeezed) <= 1 else [(i,) for i in range(weight.shape[0])]
    out = grad.clone()
    for u in units:
        w_norm = math.sqrt(float((weight[u].double() ** 2).sum()))
        g_norm = math.sqrt(float((grad[u].double() ** 2).sum()))
        max_norm = clip * max(w_norm, eps)
        if g_norm > max_norm:
            out[u] = grad[u] * (max_norm / max(g_norm, 1e-6))
    return out


CLIP = 0.01
SHAPES = [(8, 4, 3, 3), (16, 8, 1, 1), (5, 7), (8, 1, 1, 1), (8,), (), (1, 6), (6, 1), (4, 2, 3)]


@pytest.mark.parametrize("clip,eps", [(0.01, 1e-3), (1e-4, 1e-3), (0.5, 1e-2)])
def test_functional_matches_reference(clip, eps):
    gen = torch.Generator().manual_seed(0)
    params, expected = [], []
    for i, shape in enumerate(SHAPES):
        p = nn.Parameter(torch.randn(shape, generator=gen))
        if i == 1:
            p.data[:3] = 0  # zero units: the eps floor on the weight norm decides
        # gradients from tiny (below every threshold, and below the 1e-6 floor) to large
        p.grad = torch.randn(shape, generator=gen) * 10.0 ** (i % 5 - 7 if i % 2 else i % 3 - 1)
        expected.append(reference_clip(p.detach(), p.grad, clip, eps))
        params.append(p)
    params.append(nn.Parameter(torch.ones(3)))  # no grad: skipped
    adaptive_grad_clip_(params, clip, eps)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-12)
    assert params[-1].grad is None


def test_functional_clips_and_keeps():
    """Both branches of the rule are taken: some units clipped to exactly max_norm, others kept."""
    w = torch.ones(2, 4)
    p = nn.Parameter(w.clone())
    p.grad = torch.tensor([[1.0, 0, 0, 0], [1e-3, 0, 0, 0]])
    adaptive_grad_clip_([p], clip=0.01)
    torch.testing.assert_close(p.grad, torch.tensor([[0.02, 0, 0, 0], [1e-3, 0, 0, 0]]))


def test_functional_low_precision_grads():
    p = nn.Parameter(torch.randn(6, 5).bfloat16())
    p.grad = torch.randn(6, 5).bfloat16()
    expected = reference_clip(p.detach().float(), p.grad.float(), 0.01, 1e-3)
    adaptive_grad_clip_([p], 0.01)
    assert p.grad.dtype == torch.bfloat16
    torch.testing.assert_close(p.grad.float(), expected, rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("dtypes", [
    [torch.float64], [torch.float64, torch.float32, torch.bfloat16]], ids=["float64", "mixed"])
def test_functional_float64_and_mixed_dtypes_match_the_reference(dtypes):
    """float64 parameters are clipped in float64 (to float64 round-off of the reference), also when
    they share the call with float32 and bfloat16 ones, whose clip stays as exact as alone."""
    gen = torch.Generator().manual_seed(0)
    params, expected = [], []
    for i, shape in enumerate(SHAPES):
        dtype = dtypes[i % len(dtypes)]
        p = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        p.grad = (torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** (i % 3 - 2)).to(dtype)
        expected.append(reference_clip(p.detach().double(), p.grad.double(), 0.01, 1e-3))
        params.append(p)
    assert sum(not torch.equal(p.grad.double(), e) for p, e in zip(params, expected)) > 2  # some units clip
    adaptive_grad_clip_(params, 0.01)
    tolerances = {torch.float64: dict(rtol=1e-13, atol=0), torch.float32: dict(rtol=1e-6, atol=0),
                  torch.bfloat16: dict(rtol=1e-2, atol=0)}
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad.double(), e, **tolerances[p.dtype])


@pytest.mark.parametrize("clip,eps", [
    (0.0, 1e-3), (-0.01, 1e-3), (float("nan"), 1e-3), (float("inf"), 1e-3),
    (0.01, 0.0), (0.01, float("nan")), (0.01, float("inf"))])
def test_clip_and_eps_must_be_finite_positive(clip, eps):
    p = nn.Parameter(torch.ones(4, 3))
    p.grad = torch.full((4, 3), 100.0)
    with pytest.raises(ValueError, match="finite positive"):
        adaptive_grad_clip_([p], clip=clip, eps=eps)
    with pytest.raises(ValueError, match="finite positive"):
        attach_agc(torch.optim.SGD([p], lr=0.1), exclude=[], clip=clip, eps=eps)
    assert torch.equal(p.grad, torch.full((4, 3), 100.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        adaptive_grad_clip_([], clip=0.0)
    with pytest.raises(TypeError, match="Optimizer"):
        attach_agc(object())


class Tiny(nn.Module):
    """A model with a timm-style pretrained_cfg naming its classifier."""

    pretrained_cfg = {"classifier": "head.fc"}

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.gain = nn.Parameter(torch.zeros(()))
        self.head = nn.Module()
        self.head.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x) * (1 + self.gain)
        return self.head.fc(x.mean((2, 3)))


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 8, 8, generator=gen) * 100, torch.tensor([0, 1, 2, 3])


def _reference_sgd_step(model: Tiny, lr: float) -> dict[str, torch.Tensor]:
    """Parameters after one plain SGD step on reference-clipped grads (classifier weight unclipped)."""
    ref = copy.deepcopy(model)
    x, y = _batch()
    nn.functional.cross_entropy(ref(x), y).backward()
    out = {}
    for name, p in ref.named_parameters():
        g = p.grad if name == "head.fc.weight" else reference_clip(p.detach(), p.grad, 0.01, 1e-3)
        out[name] = p.detach() - lr * g
    return out


def test_wrapper_skips_classifier_and_steps():
    torch.manual_seed(0)
    model = Tiny()
    expected = _reference_sgd_step(model, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agc = attach_agc(opt, model)
    assert {id(p) for p in agc.clipped_parameters()} == {
        id(p) for p in model.parameters() if p is not model.head.fc.weight}  # the bias is clipped
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    head_grad = model.head.fc.weight.grad.clone()
    opt.step()
    assert torch.equal(model.head.fc.weight.grad, head_grad)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)


def test_wrapper_without_classifier_needs_explicit_exclude():
    model = nn.Conv2d(3, 3, 1)  # no pretrained_cfg, no get_classifier(), no nn.Linear
    with pytest.raises(ValueError, match="exclude"):
        attach_agc(torch.optim.SGD(model.parameters(), lr=0.1), model)
    agc = attach_agc(torch.optim.SGD(model.parameters(), lr=0.1), exclude=[model.bias])
    assert agc.clipped_parameters() == [model.weight]


def test_lr_scheduler_and_checkpoint():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    agc = attach_agc(opt, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    assert agc.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.param_groups is agc.optimizer.param_groups

    restored_model = copy.deepcopy(model)
    restored = torch.optim.SGD(restored_model.parameters(), lr=1.0, momentum=0.9)
    restored_agc = attach_agc(restored, restored_model)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert restored.param_groups is restored_agc.optimizer.param_groups  # still the live groups
    assert restored.param_groups[0]["lr"] == pytest.approx(0.025)
    for a, b in zip(model.parameters(), restored_model.parameters()):
        torch.testing.assert_close(opt.state[a]["momentum_buffer"], restored.state[b]["momentum_buffer"])


def test_grad_scaler_clips_unscaled_grads():
    torch.manual_seed(0)
    model = Tiny()
    expected = _reference_sgd_step(model, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach_agc(opt, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = _batch()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)

    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x * float("inf")), y)).backward()
    scaler.step(opt)  # non-finite grads: the scaler skips the step, clip included
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_fused_inner_optimizer_still_gets_unscaled_grads():
    model = Tiny()
    inner = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    assert getattr(inner, "_step_supports_amp_scaling", False)
    attach_agc(inner, model)
    assert not getattr(inner, "_step_supports_amp_scaling", False)


def test_fused_optimizer_under_grad_scaler_clips_unscaled_grads():
    """A fused Adam unscales inside its step, after AGC's hook; attached, the scaler unscales
    first, so the update is Adam's on the reference-clipped unscaled gradients."""
    torch.manual_seed(0)
    model = Tiny()
    ref = copy.deepcopy(model)
    x, y = _batch()
    nn.functional.cross_entropy(ref(x), y).backward()
    for name, p in ref.named_parameters():
        if name != "head.fc.weight":
            p.grad = reference_clip(p.detach(), p.grad, 0.01, 1e-3)
    torch.optim.Adam(ref.parameters(), lr=1e-2).step()

    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    attach_agc(opt, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    for (name, p), r in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), r.detach(), msg=name)


def test_remove_detaches_and_one_agc_per_optimizer():
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    agc = attach_agc(opt, model)
    with pytest.raises(ValueError, match="already has AGC"):
        attach_agc(opt, model)
    grads = [torch.full_like(p, 1e3) for p in model.parameters()]
    agc.remove()
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()  # no clip once removed
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    attach_agc(opt, model)  # and another may be attached
    opt.step()
    assert not torch.equal(model.conv.weight.grad, grads[0])


def _zero_weight_with_gradient():
    p = nn.Parameter(torch.zeros(3, 4))
    p.grad = torch.full((3, 4), 5.0)
    return p


def _unit_norms(t):
    return t.flatten(1).norm(dim=1)


def test_the_function_default_eps_is_1e_3():
    p = _zero_weight_with_gradient()
    adaptive_grad_clip_([p], clip=CLIP)  # a zero weight: the floor eps sets the allowed norm
    torch.testing.assert_close(_unit_norms(p.grad), torch.full((3,), CLIP * 1e-3), rtol=1e-6, atol=0)


def test_the_wrapper_default_eps_is_1e_3():
    p = _zero_weight_with_gradient()
    optimizer = torch.optim.SGD([p], lr=1.0)
    attach_agc(optimizer, clip=CLIP)
    optimizer.step()
    torch.testing.assert_close(_unit_norms(p.detach()), torch.full((3,), CLIP * 1e-3), rtol=1e-6, atol=0)
