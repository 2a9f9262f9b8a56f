"""NFNet-F0 ... F7: size, cost, numerical agreement with timm and with DeepMind's equations,
pretrained loading from an offline Hub cache, and timm's model interface."""
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import nfzoo
from _nf_reference import NFNET_PARAMS, nfnet_logits, nfnet_param_count
from nfzoo.models.nfnet import checkpoint_filter_fn
from nfzoo.weights.loading import fitting_filter
from nfzoo.models.nfnet import NFBlock, NFNet, NFNetCfg

# params (M) and GMACs at the test size as timm's dm_nfnet_f* (the same architecture) has them;
# test px from the variant table of DeepMind's nfnets/nfnet.py
PUBLISHED = {
    0: (71.49, 12.38, 256), 1: (132.63, 35.54, 320), 2: (193.78, 62.59, 352), 3: (254.92, 114.76, 416),
    4: (316.07, 215.24, 512), 5: (377.21, 289.76, 544), 6: (438.36, 377.28, 576),
}
F7_APPROX = (499.5, 478.8, 608)
# every FN and FN+ of base.py's nfnet_params, by zoo name
DEEPMIND_NAMES = {f"nfnet_{k[:2].lower()}{'_plus' if k.endswith('+') else ''}": k for k in NFNET_PARAMS}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


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


def random_state_dict(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random values in the shapes of ``template``, every parameter off its init value:
    conv gains around 1, skip gains, biases and weights random."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * (0.5 if v.ndim == 0 else 0.1) + k.endswith(".gain")
            for k, v in template.items()}


def load_through_filter(name: str, sd: dict, **kw) -> nn.Module:
    """``sd`` loaded into nfzoo's ``name`` through the checkpoint filter that Hub weights go
    through (built on the meta device: no initialisation cost)."""
    model = meta_model(name, **kw)
    model.load_state_dict(checkpoint_filter_fn(sd, model), assign=True)
    return model.eval()


@pytest.fixture(scope="module", params=[0, 1], ids=["f0", "f1"])
def logits(request):
    """Logits of timm's dm_nfnet_fN, nfzoo's nfnet_fN (both numerics) and the reference of
    DeepMind's equations, all with the same random weights, on an odd-sized input."""
    name = f"nfnet_f{request.param}"
    theirs = meta_model(f"dm_nfnet_f{request.param}")
    sd = random_state_dict(theirs.state_dict(), request.param)
    theirs.load_state_dict(sd, assign=True)
    x = torch.randn(1, 3, 41, 33, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return dict(
            timm=theirs.eval()(x),
            ours_timm=load_through_filter(name, sd, numerics="timm")(x),
            ours_deepmind=load_through_filter(name, sd)(x),
            reference=nfnet_logits(x, sd, nfzoo.models.nfnet.model_cfgs[name].depths),
        )


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_timm_numerics_reproduce_timm_logits(logits):
    assert max_rel_diff(logits["ours_timm"], logits["timm"]) < 1e-4
    assert max_rel_diff(logits["ours_deepmind"], logits["timm"]) > 1e-3  # the numerics do differ


def test_default_numerics_are_deepminds_equations(logits):
    assert max_rel_diff(logits["ours_deepmind"], logits["reference"]) < 1e-4


def test_hub_weights_load_from_offline_cache(hf_cache, monkeypatch):
    sd = random_state_dict(meta_model("dm_nfnet_f0").state_dict(), seed=0)
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
    with pytest.raises(LocalEntryNotFoundError,
                       match=r"repository timm/dm_nfnet_f0\.dm_in1k.*`hf download timm/dm_nfnet_f0\.dm_in1k`"):
        timm.create_model("nfnet_f0", pretrained=True)


def test_pretrained_cfgs():
    cfg = timm.models.get_pretrained_cfg("nfnet_f3.dm_in1k")
    assert cfg.hf_hub_id == "timm/dm_nfnet_f3.dm_in1k"
    assert cfg.input_size == (3, 320, 320) and cfg.test_input_size == (3, 416, 416)
    assert cfg.first_conv == "stem.conv1" and cfg.classifier == "head.fc"
    f7 = timm.models.get_pretrained_cfg("nfnet_f7")
    assert not f7.has_weights and "no NFNet-F7 weights" in f7.notes[0]
    assert f7.input_size == (3, 480, 480) and f7.test_input_size == (3, 608, 608)
    with pytest.raises(RuntimeError, match="No pretrained weights exist for nfnet_f7"):
        meta_model("nfnet_f7", pretrained=True)


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
    assert betas[:4] == pytest.approx([1.0, (1 + a2) ** -0.5, (1 + 2 * a2) ** -0.5, (1 + a2) ** -0.5])


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
    ours, theirs = meta_model("nfnet_f0"), meta_model("dm_nfnet_f0")  # same names: same layer-decay groups
    for coarse in (False, True):
        assert timm.models.group_parameters(ours, ours.group_matcher(coarse)) == \
            timm.models.group_parameters(theirs, theirs.group_matcher(coarse))


def test_bad_input_is_explained():
    model = tiny().eval()
    with pytest.raises(ValueError, match="in_chans=3"):
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
    model = tiny()
    model.pretrained_cfg = dict(architecture="tiny", first_conv="stem.conv1", classifier="head.fc")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("stages.3")}
    sd["stem.conv2.weight"] = torch.zeros(8, 16, 3, 3)
    sd["stem.conv9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"does not fit tiny: \d+ missing keys \(stages\.3.*"
                                         r"1 unexpected keys \(stem\.conv9.*shape mismatches.*stem\.conv2\.weight"):
        fitting_filter(checkpoint_filter_fn)(sd, model)  # what every pretrained load runs


def test_checkpoint_wrappers_are_unwrapped_and_adapted_layers_not_flagged():
    model = tiny()
    model.pretrained_cfg = dict(first_conv="stem.conv1", classifier="head.fc")
    sd = model.state_dict()
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    wrapped["state_dict"]["module.stem.conv1.weight"] = torch.zeros(16, 1, 3, 3)  # timm adapts in_chans
    del wrapped["state_dict"]["module.head.fc.bias"]  # timm drops the classifier for a new num_classes
    out = checkpoint_filter_fn(wrapped, model)
    assert out.keys() == sd.keys() - {"head.fc.bias"}


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_dilates_as_timm(output_stride):
    """Dilated stages (for dense prediction): same parameters as the undilated model, the
    features of timm's dm_nfnet_f0 at the same output_stride, reductions capped at it."""
    theirs = meta_model("dm_nfnet_f0", output_stride=output_stride)
    sd = random_state_dict(theirs.state_dict(), 0)
    theirs.load_state_dict(sd, assign=True)
    ours = load_through_filter("nfnet_f0", sd, numerics="timm", output_stride=output_stride)
    assert [i["reduction"] for i in ours.feature_info] == [2, 4, 8, min(16, output_stride), output_stride]
    x = torch.randn(1, 3, 41, 33, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs.eval().forward_intermediates(x, intermediates_only=True)
        feats = ours.forward_intermediates(x, intermediates_only=True)
    assert feats[-1].shape[-2:] == (math.ceil(41 / output_stride), math.ceil(33 / output_stride))
    for a, b in zip(feats, expected, strict=True):
        assert a.shape == b.shape and max_rel_diff(a, b) < 1e-4
    with pytest.raises(ValueError, match="output_stride=4 is not allowed; it must be 8, 16 or 32"):
        meta_model("nfnet_f0", output_stride=4)


@pytest.mark.parametrize("name", sorted(DEEPMIND_NAMES))
def test_params_are_deepminds_definition(name):
    """Every FN and FN+ has the parameter count of nfnet.py's NFNet at base.py's widths and depths
    (counted from that definition); docs/models.md states the FN+ counts."""
    count = sum(p.numel() for p in meta_model(name).parameters())
    assert count == nfnet_param_count(DEEPMIND_NAMES[name])
    if name.endswith("_plus"):
        documented = re.search(rf"^\| `{name}` \| ([\d,]+) \|", DOCS.read_text(), re.M)
        assert documented is not None, f"docs/models.md has no parameter count for {name}"
        assert int(documented.group(1).replace(",", "")) == count


@pytest.fixture(scope="module")
def f0_plus():
    """nfnet_f0_plus at its widths (one block per stage to keep it fast), float64, every parameter
    random, and its state dict."""
    sd = {k: v.double() for k, v in random_state_dict(meta_model("nfnet_f0_plus", depths=(1, 1, 1, 1)).state_dict(),
                                                        seed=3).items()}
    return load_through_filter("nfnet_f0_plus", sd, depths=(1, 1, 1, 1)), sd


@torch.no_grad()
def test_plus_forward_is_deepminds_equations(f0_plus):
    model, sd = f0_plus
    assert [i["num_chs"] for i in model.feature_info] == [64, 384, 768, 2048, 4096]
    assert model.stem.conv4.out_channels == 192 and model.stages[0][0].conv2.out_channels == 128
    x = torch.randn(1, 3, 41, 33, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = nfnet_logits(x, sd, (1, 1, 1, 1))
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


@torch.no_grad()
def test_plus_fuses(f0_plus):
    model, _ = f0_plus
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(nfzoo.fuse(model)(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", range(8))
def test_plus_cfgs_and_recipe_are_fns(variant):
    """FN+ takes FN's sizes, crop, dropout and RandAugment level (base.py copies the FN row),
    and has no weights."""
    from nfzoo.train.augment import randaugment_magnitude

    plus, fn = meta_model(f"nfnet_f{variant}_plus"), meta_model(f"nfnet_f{variant}")
    for key in ("input_size", "test_input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std"):
        assert plus.pretrained_cfg.get(key) == fn.pretrained_cfg.get(key), key
    assert plus.drop_rate == fn.drop_rate and plus.cfg.depths == fn.cfg.depths
    assert randaugment_magnitude(f"nfnet_f{variant}_plus") == randaugment_magnitude(f"nfnet_f{variant}") is not None
    assert not timm.list_pretrained(f"nfnet_f{variant}_plus*")
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        meta_model(f"nfnet_f{variant}_plus", pretrained=True)


@pytest.mark.parametrize("name", ["nfnet_f0", "dm_nf_resnet152"])
def test_skipinit_gains_start_at_zero_so_every_block_starts_as_the_identity(name):
    model = timm.create_model(name).eval()
    blocks = [m for m in model.modules() if isinstance(m, NFBlock)]
    assert blocks and all(b.skipinit_gain.item() == 0.0 for b in blocks)
    block = model.stages[1][1]  # no shortcut conv: the block is x + alpha * gain * f(x)
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
