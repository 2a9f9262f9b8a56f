"""The study's networks on tiny inputs: micro-batching computes what gradient accumulation
does, the batch-dependent set matches the norms, the NF twin, every network trains."""
import copy

import pytest
import torch
import torch.nn as nn

from nfzoo.layers import NORMS
from nfzoo.models.nfnet import NFBlock
from reproduction.experiments import GROUPED, NORMS as STUDY_NORMS, Setup, build_network
from reproduction.networks import BATCH_DEPENDENT, MicroBatchNorm, SmallNFResNet, SmallResNet, norm_factory

TINY = dict(depth=8, widths=(4, 8, 8))


def _net(norm: str, micro_batch=None) -> nn.Module:
    torch.manual_seed(0)
    return SmallResNet(norm, **TINY, num_groups=2 if norm in GROUPED else None, micro_batch=micro_batch).double()


def _accumulated(net: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int) -> None:
    """Gradient accumulation as a data-parallel job's GPUs (or nfzoo.train's micro_batch) do it:
    each micro-batch alone through the network, the losses weighted to the batch's mean."""
    for xc, yc in zip(x.split(micro_batch), y.split(micro_batch)):
        (nn.functional.cross_entropy(net(xc), yc) * len(xc) / len(x)).backward()


@pytest.mark.parametrize("norm", sorted(BATCH_DEPENDENT) + ["gn_ws"])
def test_micro_batched_norms_compute_what_gradient_accumulation_does(norm):
    """One pass with the norms seeing micro-batches == one pass per micro-batch, for the outputs'
    gradients and for the running statistics (updated once per micro-batch, in order)."""
    x, y = torch.randn(12, 1, 12, 12, dtype=torch.float64), torch.arange(12) % 10
    reference, micro, whole = _net(norm), _net(norm, micro_batch=3), _net(norm)  # the same initial weights
    for step in range(2):  # the second step starts from the running statistics the first left
        _accumulated(reference, x * (step + 1), y, 3)
        nn.functional.cross_entropy(micro(x * (step + 1)), y).backward()
    for (name, p), q in zip(reference.named_parameters(), micro.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, b), c in zip(reference.named_buffers(), micro.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-9, atol=1e-12, msg=name)
    for step in range(2):
        nn.functional.cross_entropy(whole(x * (step + 1)), y).backward()
    differs = any(not torch.allclose(p.grad, q.grad) for p, q in zip(whole.parameters(), micro.parameters()))
    assert differs == (norm in BATCH_DEPENDENT)  # a per-image norm cannot tell the split apart


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_batch_dependent_set_is_what_the_norms_do(norm):
    """BATCH_DEPENDENT, which decides which norms the study runs at every micro-batch, holds
    exactly the norms whose training output for one image changes with the rest of the batch."""
    torch.manual_seed(0)
    layer = norm_factory(norm, 2 if NORMS[norm].num_groups else None)(4).double().train()
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 10 + 5  # Batch Renorm clips: unclipped, it normalizes with running statistics
    fresh = copy.deepcopy(layer)
    alone, together = layer(x[:2])[0], fresh(x)[0]
    assert (not torch.allclose(alone, together)) == (norm in BATCH_DEPENDENT)


def test_micro_batch_norm_needs_a_positive_size():
    with pytest.raises(ValueError, match="positive"):
        MicroBatchNorm(nn.BatchNorm2d(2), 0)


def test_nf_twin_is_the_resnet_without_normalization():
    nf, bn = SmallNFResNet(**TINY, stem_stride=2, stem_pool=True), SmallResNet("bn", **TINY, stem_stride=2, stem_pool=True)
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) for m in nf.modules())
    assert sum(isinstance(m, NFBlock) for m in nf.modules()) == 3
    x = torch.randn(2, 1, 28, 28)
    # same stem, strides and widths: the same feature-map sizes at every stage
    assert nf.blocks(nf.stem(x)).shape == bn.layers(bn.pool(bn.conv1(x))).shape == (2, 8, 2, 2)
    assert nf(x).shape == bn(x).shape == (2, 10)


@pytest.mark.parametrize("norm", STUDY_NORMS)
def test_every_study_network_trains(norm):
    net = build_network(Setup(widths=(4, 8, 8)), norm, micro_batch=2)
    out = net(torch.randn(4, 1, 28, 28))
    out.logsumexp(1).sum().backward()
    assert out.shape == (4, 10) and all(p.grad is not None for p in net.parameters())
