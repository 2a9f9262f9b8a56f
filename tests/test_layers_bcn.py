"""Batch-Channel Normalization: equations, estimated statistics, per-process and synchronized
statistics under torch.distributed."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nfzoo.downstream import use_estimated_batch_stats
from nfzoo.layers import BatchChannelNorm2d
from nfzoo.layers.bcn import synchronize_batch_stats
from ws_reference import reference_norm

C = 64


def _layer(batch_stats: str = "batch", seed: int = 0, **kwargs) -> BatchChannelNorm2d:
    """A BCN layer with random affine parameters (both parts) and running statistics."""
    layer = BatchChannelNorm2d(C, batch_stats=batch_stats, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
        layer.pbn.running_mean.copy_(0.2 * torch.randn(C, generator=gen))
        layer.pbn.running_var.copy_(0.5 + torch.rand(C, generator=gen))
    return layer


def _input(n: int = 4, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2 + 3 * torch.randn(n, C, 5, 5, generator=gen)


def _as_reference_sd(layer: BatchChannelNorm2d) -> dict:
    return {f"n.{k}": v for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("train", [False, True])
def test_bcn_matches_equations(train):
    layer, x = _layer().train(train), _input()
    expected = reference_norm(x, _as_reference_sd(layer), "n", bcn=True, train=train)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_authors_layout():
    sd = _layer("batch").state_dict()
    assert sd["weight"].shape == sd["bias"].shape == (1, 32, 1)
    assert set(sd) == {"weight", "bias", "pbn.weight", "pbn.bias", "pbn.running_mean", "pbn.running_var",
                       "pbn.num_batches_tracked"}
    assert set(_layer("estimate").state_dict()) == set(sd) | {"pbn.estbn_moving_speed"}


def test_batch_part_defaults():
    pbn = BatchChannelNorm2d(C).pbn
    assert (pbn.momentum, pbn.eps) == (0.1, 1e-5)
    assert not pbn.synchronize and not BatchChannelNorm2d(C, batch_stats="estimate").pbn.synchronize


def test_estimates_are_frozen_by_default():
    """The authors' moving speed is 0: training leaves the estimates as they are and normalizes
    with them, exactly as eval does; converting a model keeps that default."""
    layer, x = _layer("estimate").train(), _input()
    before = {k: v.clone() for k, v in layer.pbn.state_dict().items()}
    out = layer(x)
    assert all(torch.equal(v, layer.pbn.state_dict()[k]) for k, v in before.items())
    torch.testing.assert_close(out, layer.eval()(x), rtol=0, atol=0)
    converted = use_estimated_batch_stats(torch.nn.Sequential(_layer("batch")))
    assert converted[0].pbn.estbn_moving_speed.item() == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="48 channels cannot be split into 32 groups"):
        BatchChannelNorm2d(48)
    with pytest.raises(ValueError, match="batch_stats must be 'batch' or 'estimate'"):
        BatchChannelNorm2d(C, batch_stats="running")


# ---------------------------------------------------------------- estimated statistics

def test_estimate_update_rule():
    """One training step: the authors' update (the variance is taken around the *old* running
    mean), then normalization with the updated estimates."""
    r = 0.25
    layer, x = _layer("estimate", moving_speed=r).train(), _input()
    old_mean, old_var = layer.pbn.running_mean.clone(), layer.pbn.running_var.clone()
    out = layer(x)
    new_mean = (1 - r) * old_mean + r * x.mean((0, 2, 3))
    new_var = (1 - r) * old_var + r * ((x - old_mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    torch.testing.assert_close(layer.pbn.running_mean, new_mean)
    torch.testing.assert_close(layer.pbn.running_var, new_var)
    sd = _as_reference_sd(layer)  # the updated estimates act as running statistics
    torch.testing.assert_close(out, reference_norm(x, sd, "n", bcn=True, train=False), rtol=1e-5, atol=1e-5)


def test_estimate_called_twice_before_backward():
    """Each call's backward reads the estimates that call normalized with, even after a later call
    has updated them in place (two views of a batch, a module used twice)."""
    layer, x = _layer("estimate", moving_speed=0.25).train(), _input()
    twice = [x.clone().requires_grad_(), (2 * x).clone().requires_grad_()]
    outs = [layer(t) for t in twice]
    sum(o.sum() for o in outs).backward()
    reference = _layer("estimate", moving_speed=0.25).train()
    for t, grad in zip(twice, (t.grad for t in twice)):  # one call and its backward at a time
        fresh = t.detach().clone().requires_grad_()
        reference(fresh).sum().backward()
        torch.testing.assert_close(grad, fresh.grad)


@pytest.mark.parametrize("micro_batch", [None, 2])
def test_estimate_never_reads_a_tensor_back_to_the_host(monkeypatch, micro_batch):
    """A training call reads no tensor back (``.item()``), which on a GPU would wait for every
    kernel queued before it, in every BCN layer of every step."""
    layer, x = _layer("estimate", moving_speed=0.25, micro_batch=micro_batch).train(), _input()

    def refuse(self):
        raise AssertionError("a host read-back in a training call")
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    layer(x).sum().backward()


def test_estimate_converges_to_batch_statistics():
    layer, x = _layer("estimate", moving_speed=0.5).train(), _input()
    with torch.no_grad():
        for _ in range(80):
            layer(x)
        train_out = layer(x)
        eval_out = layer.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-5)
    batch_bcn = _layer("batch").train()
    batch_bcn.load_state_dict(layer.state_dict(), strict=False)  # same affine parameters
    torch.testing.assert_close(eval_out, batch_bcn(x), rtol=1e-4, atol=1e-4)


def test_estimate_is_batch_independent():
    x = _input(3)
    others = _input(3, seed=7)
    # eval: a sample's output does not depend on the rest of the batch
    layer = _layer("estimate").eval()
    alone = layer(x[:1])
    for batch in (x, torch.cat([x[:1], others])):
        torch.testing.assert_close(layer(batch)[:1], alone, rtol=0, atol=1e-6)
    # training: no gradient flows between samples ...
    layer = _layer("estimate").train()
    xg = x.clone().requires_grad_()
    layer(xg)[0].sum().backward()
    assert xg.grad[0].abs().sum() > 0 and not xg.grad[1:].any()
    # ... and with frozen estimates (moving speed 0) the forward is per-sample too
    layer = _layer("estimate", moving_speed=0.0).train()
    torch.testing.assert_close(layer(x)[:1], layer(torch.cat([x[:1], others]))[:1], rtol=0, atol=1e-6)


def test_moving_speed_round_trips_through_state_dict():
    source = _layer("estimate", moving_speed=0.05)
    target = _layer("estimate", moving_speed=0.3)
    target.load_state_dict(source.state_dict())
    assert target.pbn.estbn_moving_speed.item() == pytest.approx(0.05)
    # a batch-statistics BCN checkpoint (no estbn_moving_speed) keeps the layer's own speed
    target.load_state_dict(_layer("batch").state_dict(), strict=True)
    assert target.pbn.estbn_moving_speed.item() == pytest.approx(0.05)


# ---------------------------------------------------------------- torch.distributed

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_step(layer: BatchChannelNorm2d, x: torch.Tensor, target: torch.Tensor):
    """Forward in training mode and backward of a fixed random loss; returns what the step produced."""
    x = x.clone().requires_grad_()
    out = layer.train()(x)
    (out * target).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return dict(out=out.detach(), x_grad=x.grad, grads=grads,
                running_mean=layer.pbn.running_mean.clone(), running_var=layer.pbn.running_var.clone())


SPLIT = [3, 2]  # unequal batches: the global statistics must weight them by size


def _share(rank: int) -> slice:
    return slice(sum(SPLIT[:rank]), sum(SPLIT[:rank + 1]))


def _worker(rank: int, world: int, port: int, x: torch.Tensor, target: torch.Tensor, results: str):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        mine = _share(rank)
        synced = {"batch": _layer("batch", synchronize=True),  # the constructor's option ...
                  "estimate": synchronize_batch_stats(_layer("estimate", moving_speed=0.3))}  # ... and the converter
        out = {kind: _train_step(layer, x[mine], target[mine]) for kind, layer in synced.items()}
        out |= {f"{kind}_default": _train_step(_layer(kind, moving_speed=0.3), x[mine], target[mine])
                for kind in ("batch", "estimate")}
        torch.save(out, f"{results}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """What each of two gloo processes computed, from its share of one batch."""
    tmp_path = tmp_path_factory.mktemp("bcn_ddp")
    x, target = _input(5), torch.randn(5, C, 5, 5)
    mp.spawn(_worker, args=(2, _free_port(), x, target, str(tmp_path)), nprocs=2, join=True)
    return x, target, [torch.load(tmp_path / f"{r}.pt") for r in range(2)]


def test_default_statistics_are_each_process_own(two_processes):
    """By default (the release's nn.DataParallel), each process normalizes with its own batch."""
    x, target, ranks = two_processes
    for kind in ("batch", "estimate"):
        for rank, result in enumerate(ranks):
            alone = _train_step(_layer(kind, moving_speed=0.3), x[_share(rank)], target[_share(rank)])
            for key in ("out", "x_grad", "running_mean", "running_var"):
                torch.testing.assert_close(result[f"{kind}_default"][key], alone[key], rtol=1e-5, atol=1e-6)


def test_synchronized_statistics_match_one_process(two_processes):
    x, target, ranks = two_processes
    for kind in ("batch", "estimate"):
        single = _train_step(_layer(kind, moving_speed=0.3), x, target)
        parts = [r[kind] for r in ranks]
        torch.testing.assert_close(torch.cat([p["out"] for p in parts]), single["out"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), single["x_grad"], rtol=1e-4, atol=1e-5)
        for p in parts:
            torch.testing.assert_close(p["running_mean"], single["running_mean"])
            torch.testing.assert_close(p["running_var"], single["running_var"])
        for name, grad in single["grads"].items():  # what DDP would all-reduce
            torch.testing.assert_close(parts[0]["grads"][name] + parts[1]["grads"][name], grad, rtol=1e-4, atol=1e-4)


def test_synchronize_needs_bcn_layers():
    with pytest.raises(ValueError, match="no BatchChannelNorm2d"):
        synchronize_batch_stats(torch.nn.Sequential(torch.nn.BatchNorm2d(C)))
