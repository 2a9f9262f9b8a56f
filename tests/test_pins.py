"""Pins on constants that realistic one-line mutations change without other tests noticing:
SkipInit's zero gains, AGC's eps of 1e-3 (function, wrapper, training recipe), and AGC's
clipped gradients checked exactly (not only against an upper bound)."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import nfzoo  # noqa: F401
from nfzoo.models.nfnet import NFBlock
from nfzoo.optim import adaptive_grad_clip_, attach_agc
from nfzoo.train import TrainConfig, Trainer
from nfzoo.train.sgd import clip_gradients
from test_agc import reference_clip

CLIP = 0.01


@pytest.mark.parametrize("name", ["nfnet_f0", "dm_nf_resnet152"])
def test_skipinit_gains_start_at_zero_so_every_block_starts_as_the_identity(name):
    model = timm.create_model(name).eval()
    blocks = [m for m in model.modules() if isinstance(m, NFBlock)]
    assert blocks and all(b.skipinit_gain.item() == 0.0 for b in blocks)
    block = model.stages[1][1]  # no shortcut conv: the block is x + alpha * gain * f(x)
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)


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


def test_the_training_recipe_clips_with_eps_1e_3():
    p = _zero_weight_with_gradient()
    clip_gradients([p], CLIP)
    torch.testing.assert_close(_unit_norms(p.grad), torch.full((3,), CLIP * 1e-3), rtol=1e-6, atol=0)


def test_a_training_step_applies_exactly_the_clipped_gradient(tmp_path):
    """The trainer's update with lr 1 and no momentum or decay is minus the clipped gradient,
    unit by unit, computed here from the same loss and the paper's rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 4))
    with torch.no_grad():
        model[0].weight[:2].zero_()  # two zero units: clipped against the eps floor
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.arange(16) % 4)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                      agc_clip=CLIP, ema_decay=None, warmup_epochs=0, progress=False, output_dir=str(tmp_path))
    reference = copy.deepcopy(model)
    trainer = Trainer(model, data, cfg)
    x, y = data[:16]
    nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)(reference(x), y).backward()
    w0 = reference[0].weight.detach().clone()
    expected = reference_clip(w0, reference[0].weight.grad, CLIP, 1e-3)
    assert not torch.equal(expected, reference[0].weight.grad)  # the clip is active
    trainer.train_step(x, y)
    # atol: a float32 weight of ~0.3 holds its update to about 3e-8
    torch.testing.assert_close(w0 - trainer.model[0].weight.detach(), expected, rtol=1e-5, atol=1e-7)


def test_the_downstream_optimizer_clips_the_backbone_exactly():
    from test_downstream import _detector, faster_rcnn
    from nfzoo.downstream import create_optimizer

    model = _detector(faster_rcnn, "nfnet")
    optimizer = create_optimizer(model, lr=0.1, agc_clip=CLIP)
    conv = model.backbone.features.body.get_submodule("stages_3").get_submodule("0").conv1
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e3)
    expected = reference_clip(conv.weight.detach().clone(), conv.weight.grad, CLIP, 1e-3)
    optimizer.step()
    torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-5, atol=0)
