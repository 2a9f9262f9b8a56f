"""NFNet-F0 ... F7: size, cost, numerical agreement with timm and with DeepMind's equations,
pretrained loading from an offline Hub cache, and timm's model interface."""
import math

import pytest
import timm
import torch
import torch.nn as nn
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import nfzoo
from _nf_reference import nfnet_logits
from nfzoo.models.nfnet import NFNet, NFNetCfg

# REFERENCE.md section 1: params (M), GMACs at the test size, test px
PUBLISHED = {
    0: (71.49, 12.38, 256), 1: (132.63, 35.54, 320), 2: (193.78, 62.59, 352), 3: (254.92, 114.76, 416),
    4: (316.07, 215.24, 512), 5: (377.21, 289.76, 544), 6: (438.36, 377.28, 576),
}
F7_APPROX = (499.5, 478.8, 608)


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def conv_macs(model: nn.Module, size: int) -> int:
    """MACs of every conv and linear of an NFNet, from its parameter shapes and the resolution
    each runs at (SAME padding: ceil(size / reduction)); checked against a real count on F0."""
    def res(reduction: int) -> int:
        return math.ceil(size / reduction) ** 2

    stage_reduction = {0: 4, 1: 8, 2: 16, 3: 32}
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel()
        elif not isinstance(m, nn.Conv2d):
            continue
        elif ".attn_last." in name:
            total += m.weight.numel()  # on the pooled (1x1) map
        elif name.startswith("stem."):
            total += m.weight.numel() * res(4 if name == "stem.conv4" else 2)
        elif name == "final_conv":
            total += m.weight.numel() * res(32)
        else:
            stage, blk = (int(i) for i in name.split(".")[1:3])
            r = stage_reduction[stage]
            before_stride = blk == 0 and stage > 0 and name.endswith((".conv1", ".conv2"))
            # conv1 runs before the stride; conv2 (strided) produces the stage resolution
            total += m.weight.numel() * res(r // 2 if before_stride and name.endswith(".conv1") else r)
    return total


def test_analytic_macs_equal_flop_counter_on_f0():
    model = meta_model("nfnet_f0").eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 256, 256, device="meta"))
    assert counter.get_total_flops() // 2 == conv_macs(model, 256)


@pytest.mark.parametrize("variant", sorted(PUBLISHED) + [7])
def test_params_and_macs_match_reference(variant):
    params, gmacs, size = PUBLISHED.get(variant, F7_APPROX)
    model = meta_model(f"nfnet_f{variant}")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    macs = conv_macs(model, size) / 1e9
    if variant == 7:  # approximate figures only
        assert n == pytest.approx(params, abs=0.1) and macs == pytest.approx(gmacs, rel=0.005)
    else:
        assert n == pytest.approx(params, abs=0.01)
        assert macs == pytest.approx(gmacs, rel=0.005)


def perturbed_timm_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """timm's dm_nfnet_fN, randomly initialised, with every parameter (skip gains, conv gains,
    biases) moved off its init value."""
    torch.manual_seed(variant)
    sd = timm.create_model(f"dm_nfnet_f{variant}").state_dict()
    return {k: v + torch.randn_like(v) * (0.5 if v.ndim == 0 else 0.1) for k, v in sd.items()}


def load_through_filter(name: str, sd: dict, **kw) -> nn.Module:
    """Load ``sd`` as timm loads Hub weights: pretrained=True through the model's checkpoint filter."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd), **kw).eval()


@pytest.fixture(scope="module", params=[0, 1], ids=["f0", "f1"])
def variant_and_weights(request):
    return request.param, perturbed_timm_state_dict(request.param)


@torch.no_grad()
def test_timm_numerics_reproduce_timm_logits(variant_and_weights):
    variant, sd = variant_and_weights
    x = torch.randn(2, 3, 64, 72)
    theirs = timm.create_model(f"dm_nfnet_f{variant}").eval()
    theirs.load_state_dict(sd)
    expected = theirs(x)
    ours = load_through_filter(f"nfnet_f{variant}", sd, numerics="timm")(x)
    assert (ours - expected).abs().max() < 1e-4 * expected.abs().max()
    deepmind = load_through_filter(f"nfnet_f{variant}", sd)(x)
    assert (deepmind - expected).abs().max() > 1e-3 * expected.abs().max()  # the numerics do differ


@torch.no_grad()
def test_default_numerics_are_deepminds_equations(variant_and_weights):
    variant, sd = variant_and_weights
    x = torch.randn(2, 3, 64, 72)
    expected = nfnet_logits(x, sd, nfzoo.models.nfnet.model_cfgs[f"nfnet_f{variant}"].depths)
    ours = load_through_filter(f"nfnet_f{variant}", sd)(x)
    assert (ours - expected).abs().max() < 1e-4 * expected.abs().max()


@torch.no_grad()
def test_odd_input_sizes_follow_tf_same_padding():
    sd = perturbed_timm_state_dict(0)
    x = torch.randn(1, 3, 67, 45)
    expected = nfnet_logits(x, sd, (1, 2, 6, 3))
    assert (load_through_filter("nfnet_f0", sd)(x) - expected).abs().max() < 1e-4 * expected.abs().max()


def test_hub_weights_load_from_offline_cache(hf_cache, monkeypatch):
    sd = timm.create_model("dm_nfnet_f0").state_dict()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--timm--dm_nfnet_f0.dm_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    model = timm.create_model("nfnet_f0", pretrained=True)
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert model.pretrained_cfg["hf_hub_id"] == "timm/dm_nfnet_f0.dm_in1k"


def test_empty_offline_cache_names_the_repository(hf_cache):
    with pytest.raises(LocalEntryNotFoundError) as err:
        timm.create_model("nfnet_f0", pretrained=True)
    assert "timm/dm_nfnet_f0.dm_in1k" in str(err.value) or "dm_nfnet_f0" in repr(err.value.__context__)


def test_pretrained_cfgs():
    cfg = timm.models.get_pretrained_cfg("nfnet_f3.dm_in1k")
    assert cfg.hf_hub_id == "timm/dm_nfnet_f3.dm_in1k"
    assert cfg.input_size == (3, 320, 320) and cfg.test_input_size == (3, 416, 416)
    assert cfg.first_conv == "stem.conv1" and cfg.classifier == "head.fc"
    f7 = timm.models.get_pretrained_cfg("nfnet_f7")
    assert not f7.has_weights and "no NFNet-F7 weights" in f7.notes[0]
    assert f7.input_size == (3, 480, 480) and f7.test_input_size == (3, 608, 608)
    with pytest.raises(RuntimeError, match="No pretrained weights exist for nfnet_f7"):
        timm.create_model("nfnet_f7", pretrained=True)


def test_dropout_and_stochastic_depth_defaults():
    model = meta_model("nfnet_f2")
    assert model.drop_rate == 0.4 and model.head.drop.p == 0.4
    blocks = [b for stage in model.stages for b in stage]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx([0.25 * i / len(blocks) for i in range(len(blocks))])
    assert all(not b.drop_path.scale_by_keep for b in blocks[1:])
    assert meta_model("nfnet_f2", drop_rate=0.1, drop_path_rate=0.0).head.drop.p == 0.1


def test_beta_follows_expected_std():
    model = meta_model("nfnet_f1")
    betas = [b.beta for stage in model.stages for b in stage]
    # stage 0: 1, then 1/sqrt(1 + a^2), 1/sqrt(1 + 2a^2); stage 1's transition block sees stage 0's output
    a2 = 0.2**2
    assert betas[:3] == pytest.approx([1.0, (1 + a2) ** -0.5, (1 + a2) ** -0.5])
    assert betas[2:4] == pytest.approx([(1 + a2) ** -0.5, (1 + 2 * a2) ** -0.5])


def tiny() -> NFNet:
    """A small NFNet (same code paths, narrow and shallow) for interface tests."""
    torch.manual_seed(0)
    cfg = NFNetCfg(depths=(1, 2, 1, 1), widths=(16, 32, 48, 48), stem_width=16, group_width=8)
    model = NFNet(cfg, drop_path_rate=0.0, drop_rate=0.0)
    with torch.no_grad():
        for b in model.modules():
            if hasattr(b, "skipinit_gain"):
                b.skipinit_gain.fill_(1.0)
    return model


def test_grad_checkpointing_gives_same_gradients():
    model = tiny().train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    assert grads[0]["stages.0.0.skipinit_gain"].abs() > 0


def test_forward_intermediates_and_prune():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    final, feats = model.forward_intermediates(x)
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info] == [64, 16, 32, 48, 96]
    assert [64 // f.shape[-1] for f in feats] == [i["reduction"] for i in model.feature_info]
    assert torch.allclose(final, model.forward_features(x))
    assert torch.allclose(model.forward_head(final), model(x))
    assert model.forward_head(final, pre_logits=True).shape == (1, 96)
    kept = model.prune_intermediate_layers([1, 2])
    assert kept == [1, 2] and model.num_classes == 0
    assert [f.shape for f in model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)] == \
        [f.shape for f in feats[1:3]]


def test_features_only_shapes_and_reductions():
    model = timm.create_model("nfnet_f0", features_only=True, out_indices=(0, 2, 4)).eval()
    assert model.feature_info.reduction() == [2, 8, 32]
    assert model.feature_info.channels() == [64, 512, 3072]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 512, 8, 8), (1, 3072, 2, 2)]


def test_classifier_and_timm_arguments():
    model = meta_model("nfnet_f0", num_classes=10, in_chans=1, global_pool="max")
    assert model.get_classifier().out_features == 10 and model.stem.conv1.in_channels == 1
    model.reset_classifier(5, "avg")
    assert model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    nwd = model.no_weight_decay()
    assert "stages.0.0.skipinit_gain" in nwd and "stem.conv1.gain" in nwd and "final_conv.bias" in nwd
    assert "stem.conv1.weight" not in nwd
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert len(groups) == 1 + 12 + 1  # stem, one group per block, final_conv


def test_bad_input_is_explained():
    model = tiny().eval()
    with pytest.raises(ValueError, match="in_chans=1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="numerics"):
        NFNet(NFNetCfg(depths=(1, 1, 1, 1)), numerics="jax")


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no pretrained tag 'in22k'.*dm_in1k"):
        meta_model("nfnet_f0.in22k")
    with pytest.raises(ValueError, match="no weights exist"):
        meta_model("nfnet_f7.dm_in1k")


def test_mismatched_state_dict_is_explained():
    sd = {k: v for k, v in timm.create_model("dm_nfnet_f0").state_dict().items() if "stages.3" not in k}
    sd["stem.conv2.weight"] = torch.zeros(8, 16, 3, 3)
    with pytest.raises(ValueError, match=r"missing keys: stages\.3.*shape mismatches: stem\.conv2\.weight"):
        load_through_filter("nfnet_f0", sd)
    # a module. prefix (DataParallel) is stripped; a different num_classes drops the classifier as timm does
    full = timm.create_model("dm_nfnet_f0").state_dict()
    model = load_through_filter("nfnet_f0", {"module." + k: v for k, v in full.items()}, num_classes=7)
    assert torch.equal(model.final_conv.weight, full["final_conv.weight"])
