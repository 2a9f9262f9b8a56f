"""The precision schemes of nfzoo.train (nfzoo.train.precision) on CPU, where bf16 runs too:
DeepMind's (nfnets/experiment.py _train_fn with bfloat16=True: bf16 casts of float32 master
parameters for the whole forward and backward, float32 gradients before AGC and the update),
autocast and float32."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import nfzoo.train.trainer as trainer_module
from nfzoo.layers import ScaledStdConv2d
from nfzoo.layers.std_conv import scaled_standardize
from nfzoo.train import TrainConfig, Trainer


class TinyNet(nn.Module):
    """A scaled-WS conv, a batch norm (running statistics: buffers), GELU, a classifier."""

    def __init__(self):
        super().__init__()
        self.conv = ScaledStdConv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.act = nn.GELU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.act(self.norm(self.conv(x))).mean((2, 3)))


def make_trainer(tmp_path, precision, steps=1):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8 * steps, 1, 8, 8), torch.randint(0, 3, (8 * steps,)))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, warmup_epochs=0, agc_clip=0.01, ema_decay=None, ckpt_every=0,
                      eval_every=0, progress=False, output_dir=str(tmp_path), resume=None, precision=precision)
    return Trainer(TinyNet(), data, cfg, eval_set=data)


def record_forward(model, seen):
    """Forward hooks noting each leaf module's input and parameter dtypes, and the WS conv's
    standardized weight with the weight and gain it was computed from."""
    def hook(module, inputs, output):
        seen.append((module, inputs[0].dtype, {n: p.dtype for n, p in module.named_parameters(recurse=False)},
                     output.dtype))
        if isinstance(module, ScaledStdConv2d):
            seen.append(("ws", module.standardized_weight().detach(), module.weight.detach().clone(),
                         module.gain.detach().clone()))
    return [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]


def record_gradients(monkeypatch, trainer, grads):
    """The gradients AGC receives (before clipping) and those the optimizer steps with."""
    clip = trainer_module.clip_gradients

    def recording_clip(params, threshold):
        grads["agc"] = [p.grad.clone() for p in params]
        clip(params, threshold)
    monkeypatch.setattr(trainer_module, "clip_gradients", recording_clip)
    trainer.optimizer.register_step_pre_hook(
        lambda opt, *_: grads.__setitem__("update", [p.grad.dtype for g in opt.param_groups for p in g["params"]]))


def test_deepmind_bf16_runs_the_step_in_bf16_on_float32_masters(tmp_path, monkeypatch):
    """Every module sees bf16 inputs and bf16 parameters; the WS statistics are taken on the bf16
    weight; the gradients reach AGC in float32 and equal those of a bf16 copy of the model cast
    to float32 (DeepMind's from_bf16(grads)); the parameters stay float32; the batch norm's
    running statistics are updated as the bf16 copy's; the loss is float32."""
    trainer = make_trainer(tmp_path, "deepmind-bf16")
    assert trainer.amp_dtype is None and trainer.precision == "deepmind-bf16"
    model = trainer.model
    reference = copy.deepcopy(model).to(torch.bfloat16)
    masters = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen, grads = [], {}
    hooks = record_forward(model, seen)
    record_gradients(monkeypatch, trainer, grads)
    x, y = trainer.train_set[:8]
    loss = trainer.train_step(x, y)
    for h in hooks:
        h.remove()
    assert loss.dtype == torch.float32
    leaves = [s for s in seen if s[0] != "ws"]
    assert len(leaves) == 4
    for module, in_dtype, param_dtypes, out_dtype in leaves:
        assert in_dtype == out_dtype == torch.bfloat16, module
        assert set(param_dtypes.values()) <= {torch.bfloat16}, module
    (_, standardized, weight, gain), = [s for s in seen if s[0] == "ws"]
    assert standardized.dtype == weight.dtype == torch.bfloat16
    torch.testing.assert_close(standardized, scaled_standardize(weight, gain, True, 1e-4), rtol=0, atol=0)
    assert torch.equal(weight, masters["conv.weight"].to(torch.bfloat16))
    assert not torch.equal(standardized, scaled_standardize(masters["conv.weight"], masters["conv.gain"], True,
                                                            1e-4).to(torch.bfloat16))  # not the float32 master's

    ref_loss = trainer.criterion(reference(x.to(torch.bfloat16)).float(), y)
    ref_loss.backward()
    ref_grads = [p.grad.float() for p in reference.parameters()]
    agc_names = [n for n, p in model.named_parameters() if any(p is q for q in trainer.agc_params)]
    ref_by_name = dict(zip([n for n, _ in reference.named_parameters()], ref_grads))
    assert all(g.dtype == torch.float32 for g in grads["agc"])
    for name, g in zip(agc_names, grads["agc"]):
        torch.testing.assert_close(g, ref_by_name[name], rtol=0, atol=0, msg=name)
    assert set(grads["update"]) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, masters[n]) for n, p in model.named_parameters())  # the update happened
    assert model.norm.running_mean.dtype == torch.float32
    torch.testing.assert_close(model.norm.running_mean, reference.norm.running_mean.float(), rtol=0, atol=0)
    torch.testing.assert_close(model.norm.running_var, reference.norm.running_var.float(), rtol=0, atol=0)
    assert int(model.norm.num_batches_tracked) == 1


def test_deepmind_bf16_evaluates_in_float32(tmp_path):
    """DeepMind's _eval_fn casts nothing."""
    trainer = make_trainer(tmp_path, "deepmind-bf16")
    seen = []
    hooks = record_forward(trainer.model, seen)
    trainer.evaluate()
    for h in hooks:
        h.remove()
    assert {s[1] for s in seen if s[0] != "ws"} == {torch.float32}


@pytest.mark.parametrize("precision,op_dtype", [("autocast-bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_and_fp32_keep_float32_parameters_and_gradients(tmp_path, monkeypatch, precision, op_dtype):
    """Autocast: float32 parameters seen by every module, the conv and linear computed in bf16,
    the WS statistics on the float32 weight; fp32: float32 throughout. Gradients float32."""
    trainer = make_trainer(tmp_path, precision)
    seen, grads = [], {}
    hooks = record_forward(trainer.model, seen)
    record_gradients(monkeypatch, trainer, grads)
    x, y = trainer.train_set[:8]
    trainer.train_step(x, y)
    for h in hooks:
        h.remove()
    for module, _, param_dtypes, out_dtype in (s for s in seen if s[0] != "ws"):
        assert set(param_dtypes.values()) <= {torch.float32}, module
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert out_dtype == op_dtype, module
    (_, standardized, weight, _), = [s for s in seen if s[0] == "ws"]
    assert standardized.dtype == weight.dtype == torch.float32
    assert {g.dtype for g in grads["agc"]} == set(grads["update"]) == {torch.float32}


def test_precision_choices_are_checked():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="bf17")
