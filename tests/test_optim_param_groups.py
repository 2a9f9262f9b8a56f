"""The weight-decay and AGC rule (nfzoo.optim.param_groups): against DeepMind's grouping, and
every caller (models, training recipe, fine-tuning optimizer, AGC hook, timm's factory) agreeing."""
import pytest
import timm
import timm.optim
import torch
import torch.nn as nn

from nfzoo.downstream import create_optimizer
from nfzoo.layers import SqueezeExcite
from nfzoo.optim import DEEPMIND_BATCH, DEEPMIND_CLIP, attach_agc, attached_agc, clip_for_batch
from nfzoo.optim.param_groups import agc_parameters, weight_decay_groups
from nfzoo.train import TrainConfig
from nfzoo.train.sgd import build_optimizer
from nfzoo.train.train_cli import build_parser

SMALL_NFNET = dict(depths=(1, 1, 1, 1), widths=(32, 64, 64, 64), stem_width=16, group_width=16)
MODELS = {
    "nfnet_f0": SMALL_NFNET,
    "dm_nf_resnet152": {},
    "resnet50_gn_ws": {},
    "resnet50_bcn_ws": {},
}


def build(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **MODELS[name])


def deepmind_partition(model: nn.Module) -> tuple[set[str], set[str]]:
    """``Experiment._make_opt`` of DeepMind's nfnets/experiment_nfnets.py, on PyTorch names.

    Each parameter gets its Haiku leaf name (conv/linear weight ``w``, their bias ``b``, norm
    affine ``scale``/``offset``, gains keep their names) and DeepMind's predicates are applied:
    gains-and-biases (``scale``, ``offset``, ``b``, or a name containing gain or bias) get no
    weight decay; a linear layer outside squeeze-excite is the classifier, whose weights are not
    clipped. Returns (names without weight decay, names AGC leaves alone).
    """
    se = [name for name, m in model.named_modules() if isinstance(m, SqueezeExcite)]
    no_decay, unclipped = set(), set()
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}"
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                leaf = {"weight": "w", "bias": "b"}.get(pname, pname)
            else:
                leaf = {"weight": "scale", "bias": "offset"}.get(pname, pname)
            if leaf in ("scale", "offset", "b") or "gain" in leaf or "bias" in leaf:
                no_decay.add(full)
            elif isinstance(module, nn.Linear) and not any(module_name.startswith(s + ".") for s in se):
                unclipped.add(full)
    return no_decay, unclipped


def names_of(model: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def undecayed(model: nn.Module, groups) -> set[str]:
    return names_of(model, [p for g in groups if g["weight_decay"] == 0 for p in g["params"]])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_caller_uses_the_same_groups(name):
    model = build(name)
    no_decay, unclipped = deepmind_partition(model)
    everything = {n for n, _ in model.named_parameters()}
    assert set(model.no_weight_decay()) == no_decay
    assert undecayed(model, build_optimizer(model, TrainConfig()).param_groups) == no_decay
    assert undecayed(model, weight_decay_groups(model, 1e-4)) == no_decay
    # timm's own factory, which reads model.no_weight_decay()
    assert undecayed(model, timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4).param_groups) \
        == no_decay
    clipped = everything - unclipped
    assert names_of(model, agc_parameters(model)) == clipped  # the recipe's trainer and the benchmark
    assert names_of(model, attach_agc(torch.optim.SGD(model.parameters(), lr=0.1), model).clipped_parameters()) == clipped
    assert names_of(model, attached_agc(create_optimizer(model, lr=0.1, agc_clip=0.01)).clipped_parameters()) == clipped


def test_nfnet_groups_follow_deepmind():
    model = build("nfnet_f0")
    no_decay = set(model.no_weight_decay())
    for decayed in ("stem.conv1.weight", "stages.0.0.conv2.weight", "stages.0.0.attn_last.fc1.weight", "head.fc.weight"):
        assert decayed not in no_decay
    for free in ("stem.conv1.gain", "stem.conv1.bias", "stages.0.0.skipinit_gain", "head.fc.bias"):
        assert free in no_decay
    clipped = names_of(model, agc_parameters(model))
    assert "head.fc.weight" not in clipped
    assert {"head.fc.bias", "stem.conv1.gain", "stages.0.0.skipinit_gain", "stages.0.0.attn_last.fc1.weight"} <= clipped
    assert len(clipped) == len(list(model.parameters())) - 1


def test_removed_classifier_leaves_nothing_exempt():
    model = build("nfnet_f0")
    model.reset_classifier(0)
    assert len(agc_parameters(model)) == len(list(model.parameters()))


def test_clip_threshold_follows_the_global_batch():
    assert clip_for_batch(DEEPMIND_BATCH) == DEEPMIND_CLIP == 0.01  # experiment_nfnets.py
    assert clip_for_batch(256) == 0.01
    with pytest.raises(ValueError, match="agc-clip"):
        clip_for_batch(2 * DEEPMIND_BATCH)
    # batch_size is the global batch
    assert TrainConfig(batch_size=4096).agc_clip == "batch" and TrainConfig(batch_size=4096).agc_threshold() == 0.01
    with pytest.raises(ValueError, match="8192"):
        TrainConfig(batch_size=8192).agc_threshold()
    assert TrainConfig(batch_size=8192, agc_clip=0.005).agc_threshold() == 0.005
    assert TrainConfig(agc_clip=None).agc_threshold() is None
    with pytest.raises(ValueError, match="agc_clip"):
        TrainConfig(agc_clip="auto")
    parse = build_parser().parse_args
    assert parse(["--model", "m"]).agc_clip == "batch"
    assert parse(["--model", "m", "--agc-clip", "0.02"]).agc_clip == 0.02
    assert parse(["--model", "m", "--agc-clip", "none"]).agc_clip is None
