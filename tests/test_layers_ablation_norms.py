"""The ablation's normalizers against references written here from the papers' equations."""
import pytest
import torch
import torch.nn as nn

from nfzoo.layers.ablation_norms import (
    BatchInstanceNorm2d, BatchRenorm2d, SwitchableNorm2d, clamp_gates_, instance_norm, layer_norm,
    weight_norm_convs,
)

EPS = 1e-5


def _x(n=4, c=6, h=5, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()


def _stats(x, dims):
    """Mean and population variance, written out."""
    m = x.mean(dims, keepdim=True)
    return m, ((x - m) ** 2).mean(dims, keepdim=True)


def _per_channel(v):
    return v.view(1, -1, 1, 1)


def _randomize_affine(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.rand(m.num_channels, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_channels, generator=g))


def test_layer_and_instance_norm_statistics():
    x = _x()
    m_ln, v_ln = _stats(x, (1, 2, 3))
    m_in, v_in = _stats(x, (2, 3))
    torch.testing.assert_close(layer_norm(6).double()(x), (x - m_ln) / torch.sqrt(v_ln + EPS))
    torch.testing.assert_close(instance_norm(6).double()(x), (x - m_in) / torch.sqrt(v_in + EPS))


@pytest.mark.parametrize("r_max,d_max", [(1.5, 0.5), (3.0, 5.0), (1.0, 0.0)])
def test_batch_renorm_train_step_matches_equations(r_max, d_max):
    bn = BatchRenorm2d(6, momentum=0.2, r_max=r_max, d_max=d_max).double()
    _randomize_affine(bn)
    # Running statistics far from the batch's, so that the clipping is exercised.
    mu = torch.linspace(-2, 4, 6, dtype=torch.float64)
    var = torch.linspace(0.5, 30, 6, dtype=torch.float64)
    bn.running_mean.copy_(mu)
    bn.running_var.copy_(var)
    x = _x()
    y = bn(x)

    mean_b, var_b = _stats(x, (0, 2, 3))
    sigma_b = torch.sqrt(var_b + EPS)
    sigma = torch.sqrt(_per_channel(var) + EPS)
    r = (sigma_b / sigma).detach().clamp(1 / r_max, r_max)
    d = ((mean_b - _per_channel(mu)) / sigma).detach().clamp(-d_max, d_max)
    ref = ((x - mean_b) / sigma_b * r + d) * _per_channel(bn.weight) + _per_channel(bn.bias)
    torch.testing.assert_close(y, ref)
    if r_max > 1:
        assert ((r > 1 / r_max) & (r < r_max)).logical_not().any(), "test should clip some r"
    # r and d are constants for backprop.
    gy = torch.randn_like(y)
    (g_ours,) = torch.autograd.grad(y, x, gy)
    (g_ref,) = torch.autograd.grad(ref, x, gy)
    torch.testing.assert_close(g_ours, g_ref)
    # Running statistics move towards the batch's by the momentum.
    torch.testing.assert_close(bn.running_mean, mu + 0.2 * (mean_b.flatten().detach() - mu))
    torch.testing.assert_close(bn.running_var, var + 0.2 * (var_b.flatten().detach() - var))
    # Evaluation uses the running statistics.
    bn.eval()
    ref_eval = (x - _per_channel(bn.running_mean)) / torch.sqrt(_per_channel(bn.running_var) + EPS)
    torch.testing.assert_close(bn(x), ref_eval * _per_channel(bn.weight) + _per_channel(bn.bias))


def test_batch_renorm_without_slack_is_batch_norm_and_warmup_ramps():
    x = _x()
    bn = BatchRenorm2d(6, r_max=1.0, d_max=0.0).double()
    torch.testing.assert_close(bn(x), nn.functional.batch_norm(x, None, None, training=True, eps=EPS))
    warm = BatchRenorm2d(6, r_max=3.0, d_max=5.0, warmup_steps=4)
    assert warm.limits() == (1.0, 0.0)
    warm.num_batches_tracked.fill_(2)
    assert warm.limits() == (2.0, 2.5)
    warm.num_batches_tracked.fill_(40)
    assert warm.limits() == (3.0, 5.0)
    with pytest.raises(ValueError, match="r_max"):
        BatchRenorm2d(6, r_max=0.5)


def test_batch_instance_norm_gates_bn_and_in():
    bin_ = BatchInstanceNorm2d(6, momentum=0.1).double()
    _randomize_affine(bin_)
    rho = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.9], dtype=torch.float64)
    bin_.rho.data.copy_(rho)
    x = _x()
    y = bin_(x)
    m_bn, v_bn = _stats(x, (0, 2, 3))
    m_in, v_in = _stats(x, (2, 3))
    x_bn = (x - m_bn) / torch.sqrt(v_bn + EPS)
    x_in = (x - m_in) / torch.sqrt(v_in + EPS)
    rho_ = _per_channel(rho)
    ref = (rho_ * x_bn + (1 - rho_) * x_in) * _per_channel(bin_.weight) + _per_channel(bin_.bias)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(bin_.running_var, 0.9 + 0.1 * v_bn.flatten().detach())
    # The gate learns: its gradient is <dL/dy, gamma * (x_bn - x_in)> per channel.
    gy = torch.randn_like(y)
    (g_rho,) = torch.autograd.grad(y, bin_.rho, gy)
    torch.testing.assert_close(g_rho, (gy * _per_channel(bin_.weight) * (x_bn - x_in)).sum((0, 2, 3)))
    # Clipping after an update keeps rho in [0, 1].
    bin_.rho.data.copy_(torch.tensor([-0.3, 0.2, 1.4, 0.7, 1.0, 2.0]))
    clamp_gates_(nn.Sequential(bin_))
    torch.testing.assert_close(bin_.rho.data, torch.tensor([0.0, 0.2, 1.0, 0.7, 1.0, 1.0], dtype=torch.float64))


def test_switchable_norm_importance_weights():
    sn = SwitchableNorm2d(6, momentum=0.1).double()
    _randomize_affine(sn)
    sn.mean_weight.data.copy_(torch.tensor([0.3, -1.0, 2.0]))
    sn.var_weight.data.copy_(torch.tensor([1.5, 0.2, -0.4]))
    x = _x()
    y = sn(x)
    stats = [_stats(x, dims) for dims in ((2, 3), (1, 2, 3), (0, 2, 3))]  # IN, LN, BN
    wm = torch.exp(sn.mean_weight) / torch.exp(sn.mean_weight).sum()
    wv = torch.exp(sn.var_weight) / torch.exp(sn.var_weight).sum()
    mean = sum(wm[k] * stats[k][0] for k in range(3))
    var = sum(wv[k] * stats[k][1] for k in range(3))
    ref = (x - mean) / torch.sqrt(var + EPS) * _per_channel(sn.weight) + _per_channel(sn.bias)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    g_ours = torch.autograd.grad(y, [sn.mean_weight, sn.var_weight], gy)
    g_ref = torch.autograd.grad(ref, [sn.mean_weight, sn.var_weight], gy)
    torch.testing.assert_close(g_ours, g_ref)
    torch.testing.assert_close(sn.running_mean, 0.1 * stats[2][0].flatten().detach())
    # A one-hot choice in eval is batch norm with the running statistics.
    sn.mean_weight.data.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    sn.var_weight.data.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    sn.eval()
    ref_eval = nn.functional.batch_norm(x, sn.running_mean, sn.running_var, sn.weight, sn.bias, eps=EPS)
    torch.testing.assert_close(sn(x), ref_eval)


def test_weight_norm_convs_reparametrizes_every_conv():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1))
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    weight_norm_convs(net)
    torch.testing.assert_close(net(x), before)  # same function at initialisation
    conv = net[2]
    g = conv.parametrizations.weight.original0
    v = conv.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(2.0)
        v.mul_(7.0)  # the direction's norm is divided out
    torch.testing.assert_close(conv.weight, g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1))


def test_bad_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"expects \(N, 6, H, W\)"):
        SwitchableNorm2d(6)(torch.randn(2, 5, 3, 3))


def test_batch_renorm_micro_batches_follow_the_warmup_ramp():
    """With micro_batch, each micro-batch is renormalized at its own point of the warmup ramp, as
    one call per micro-batch would."""
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64) * 3 + 1
    one_by_one = BatchRenorm2d(4, warmup_steps=4).double()
    at_once = BatchRenorm2d(4, warmup_steps=4, micro_batch=2).double()
    torch.testing.assert_close(at_once(x), torch.cat([one_by_one(c) for c in x.split(2)]))
    torch.testing.assert_close(at_once.running_var, one_by_one.running_var)
    assert at_once.num_batches_tracked == one_by_one.num_batches_tracked == 3
