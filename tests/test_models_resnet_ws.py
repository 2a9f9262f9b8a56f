"""GN+WS and BCN+WS ResNets: authors' checkpoints, numerics, sizes, timm interface, norm choice."""
import functools

import pytest
import timm
import torch
import torchvision

import nfzoo  # noqa: F401  (registers the models)
from nfzoo.layers import NORMS, BatchChannelNorm2d, WSConv2d
from nfzoo.models.resnet_ws import MODELS, build_resnet_ws, checkpoint_filter_fn
from ws_reference import authors_checkpoint, mmlab_checkpoint, reference_forward

checkpoint = functools.cache(authors_checkpoint)  # shared, never modified
ARCH = {m: m.rsplit("_", 2)[0] for m in MODELS}  # 'resnet50_gn_ws' -> 'resnet50'


def _is_bcn(model_name: str) -> bool:
    return "_bcn_" in model_name


def _load(model_name: str, checkpoint: dict) -> torch.nn.Module:
    model = timm.create_model(model_name)
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
    return model


@pytest.mark.parametrize("model_name", ["resnet50_gn_ws", "resnext50_32x4d_gn_ws", "resnet50_bcn_ws"])
def test_authors_checkpoint_loads_strictly(model_name):
    ckpt = checkpoint(ARCH[model_name], _is_bcn(model_name))
    model = _load(model_name, ckpt)
    loaded = model.state_dict()
    for key, value in ckpt.items():
        torch.testing.assert_close(loaded[key.removeprefix("module.")], value, rtol=0, atol=0)


@pytest.mark.parametrize("model_name", ["resnet50_gn_ws", "resnext50_32x4d_gn_ws"])
def test_openmmlab_mirror_loads_strictly(model_name):
    ckpt = checkpoint(ARCH[model_name], False)
    model = _load(model_name, mmlab_checkpoint(ckpt))
    torch.testing.assert_close(model.layer2[0].bn2.weight, ckpt["module.layer2.0.bn2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.bn1.bias, ckpt["module.bn1.bias"], rtol=0, atol=0)


def test_pretrained_file_through_timm(tmp_path):
    """timm's own pretrained path (file source) runs the filter; a new head drops the classifier."""
    path = tmp_path / "rn50_bcn_ws.pth"
    ckpt = checkpoint("resnet50", True)
    torch.save(ckpt, path)
    model = timm.create_model("resnet50_bcn_ws", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.layer4[2].bn3.pbn.running_var, ckpt["module.layer4.2.bn3.pbn.running_var"])
    assert model.fc.out_features == 10


def test_estimated_bcn_model_takes_batch_stats_weights():
    """Micro-batch fine-tuning starts from the released (batch-statistics) BCN weights; the
    estimates' moving speed is the layer's own (the authors' 0), which the release does not hold."""
    model = build_resnet_ws("resnet50", "bcn_ws_est")
    model.load_state_dict(checkpoint_filter_fn(checkpoint("resnet50", True), model), strict=True)
    assert model.bn1.pbn.estbn_moving_speed.item() == 0.0


@pytest.mark.parametrize("model_name, arch, bcn, message", [
    ("resnet50_gn_ws", "resnet101", False, r"153 unexpected keys.*another model.*\(3, 4, 23, 3\)"),
    ("resnet50_gn_ws", "resnext50_32x4d", False, r"shape mismatches.*another model.*32 groups"),
    ("resnet50_gn_ws", "resnet50", True, r"has Batch-Channel Norm \(BCN\) layers but .* uses GroupNorm"),
    ("resnet50_bcn_ws", "resnet50", False, r"has GroupNorm layers but .* uses Batch-Channel Norm"),
    ("resnet50_gn_ws", "torchvision", False, r"has BatchNorm layers but .* uses GroupNorm"),
])
def test_mismatched_checkpoints_are_refused(model_name, arch, bcn, message):
    with torch.device("meta"):
        model = timm.create_model(model_name)
        ckpt = (torchvision.models.resnet50().state_dict() if arch == "torchvision"
                else authors_checkpoint(arch, bcn, seed=None))
    with pytest.raises(ValueError, match=message):
        checkpoint_filter_fn(ckpt, model)


# The 101-layer nets differ from the 50-layer ones only in depth (checked by the param counts).
_DEEP = pytest.mark.slow


@pytest.mark.parametrize("model_name", [
    pytest.param(m, marks=_DEEP) if "101" in m else m for m in MODELS])
def test_forward_matches_reference(model_name):
    arch, bcn = ARCH[model_name], _is_bcn(model_name)
    ckpt = checkpoint(arch, bcn)
    model = _load(model_name, ckpt).eval()
    sd = {k.removeprefix("module."): v for k, v in ckpt.items()}
    model, sd = model.double(), {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        modes = (False, True) if bcn else (False,)
        for train in modes:  # BCN: running statistics (eval) and batch statistics (train)
            out = model.train(train)(x)
            ref = reference_forward(sd, arch, bcn, x, train=train)
            assert (out - ref).abs().max().item() < 1e-4, (model_name, train)


def _params(create, name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create(name).parameters())


# BCN adds, per norm layer, a per-group affine (2 x 32) on top of the batch part's per-channel
# affine (the same count as BN/GN). Norm layers: stem 1 + 3 per block + 1 per stage's downsample:
# 50-layer nets 1 + 3 * 16 + 4 = 53, 101-layer nets 1 + 3 * 33 + 4 = 104.
BCN_EXTRA = {50: 53 * 64, 101: 104 * 64}

def _reference_count(arch: str) -> int:
    """The same network with BatchNorm: torchvision's (it has no resnext101_32x4d; timm's is the same net)."""
    return _params(timm.create_model if arch == "resnext101_32x4d" else torchvision.models.get_model, arch)


@pytest.mark.parametrize("model_name", MODELS)
def test_param_counts(model_name):
    arch = ARCH[model_name]
    depth = 101 if "101" in arch else 50
    reference = _reference_count(arch)
    expected = reference + (BCN_EXTRA[depth] if _is_bcn(model_name) else 0)
    count = _params(timm.create_model, model_name)
    assert count == expected
    if arch.startswith("resnet"):
        low, high = (25.5e6, 25.6e6) if depth == 50 else (44.5e6, 44.6e6)
        assert low <= count <= high
    # the published figures: 25,557,032, 44,549,160, 25,028,904, 44,177,704
    assert reference == {"resnet50": 25_557_032, "resnet101": 44_549_160,
                                      "resnext50_32x4d": 25_028_904, "resnext101_32x4d": 44_177_704}[arch]


@pytest.mark.parametrize("model_name", MODELS)
def test_features_only(model_name):
    with torch.device("meta"):  # shapes only
        five = timm.create_model(model_name, features_only=True)
        four = timm.create_model(model_name, features_only=True, out_indices=(1, 2, 3, 4))
        feats = five(torch.empty(2, 3, 64, 64))
    assert five.feature_info.channels() == [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert five.feature_info.reduction() == [64 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]
    assert four.feature_info.channels() == [256, 512, 1024, 2048]
    assert four.feature_info.reduction() == [4, 8, 16, 32]


def test_timm_interface():
    model = timm.create_model("resnet50_bcn_ws", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(final), model(x))
        assert model.forward_head(final, pre_logits=True).shape == (2, 2048)
    assert [t.shape[1] for t in inter] == [64, 256, 512, 1024, 2048]
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.group_matcher()["stem"].startswith("^conv1")
    # decay on the 53 conv weights and the fc weight only; BCN's (1, 32, 1) group weights are
    # excluded too (timm only skips 1-D params itself)
    nwd = set(model.no_weight_decay())
    assert "layer1.0.bn3.weight" in nwd and "fc.bias" in nwd
    assert "layer1.0.conv1.weight" not in nwd and "fc.weight" not in nwd
    assert len(nwd) == len(list(model.parameters())) - 54
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    assert model.prune_intermediate_layers(indices=(1, 2)) == [1, 2]


def test_pretrained_cfgs():
    cfg = timm.create_model("resnext50_32x4d_gn_ws.mmlab_in1k").pretrained_cfg
    assert cfg["url"].endswith("resnext50_32x4d_gn_ws-0d87ac85.pth")
    assert (cfg["classifier"], cfg["first_conv"], cfg["crop_pct"], cfg["interpolation"]) == \
        ("fc", "conv1", 0.875, "bilinear")
    assert timm.create_model("resnet50_bcn_ws").pretrained_cfg["tag"] == "jhu_in1k"


def test_release_numerics():
    gn, bcn = timm.create_model("resnet50_gn_ws"), timm.create_model("resnet50_bcn_ws")
    convs = [m for m in gn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 53 and all(isinstance(m, WSConv2d) and m.eps_in == "std" for m in convs)
    assert all(m.eps_in == "var" for m in bcn.modules() if isinstance(m, WSConv2d))
    assert all(m.num_groups == 32 for m in gn.modules() if isinstance(m, torch.nn.GroupNorm))
    # the BCN+WS release zero-initialises each block's last norm weight; the GN+WS release does not
    assert all(not block.bn3.weight.any() for layer in (bcn.layer1, bcn.layer4) for block in layer)
    assert all((block.bn3.weight == 1).all() for layer in (gn.layer1, gn.layer4) for block in layer)
    assert all((block.bn2.weight == 1).all() for layer in (bcn.layer1, bcn.layer4) for block in layer)


@pytest.mark.parametrize("norm, norm_type, conv_type", [
    ("bn", torch.nn.BatchNorm2d, torch.nn.Conv2d),
    ("gn", torch.nn.GroupNorm, torch.nn.Conv2d),
    ("gn_ws", torch.nn.GroupNorm, WSConv2d),
    ("bcn_ws", BatchChannelNorm2d, WSConv2d),
    ("bcn_ws_est", BatchChannelNorm2d, WSConv2d),
])
def test_norm_choice(norm, norm_type, conv_type):
    model = build_resnet_ws("resnet50", norm)
    assert isinstance(model.layer3[1].bn2, norm_type)
    assert type(model.layer2[0].downsample[0]) is conv_type
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_choice_builds_and_trains(norm):
    """Every registered choice, the seeds' normalizers included, gives a trainable ResNet."""
    model = build_resnet_ws("resnet50", norm, num_classes=4)
    reference = model.layer1[0].conv1.weight.detach().clone()  # the conv's weight survives the swap
    loss = model.train()(torch.randn(2, 3, 64, 64)).square().mean()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert torch.allclose(model.layer1[0].conv1.weight.detach(), reference)


def test_norm_choice_errors():
    with pytest.raises(ValueError, match="unknown norm 'xn'.*'gn_ws'"):
        build_resnet_ws("resnet50", "xn")
    with pytest.raises(ValueError, match="layer bn1: its 64 channels are not divisible by 48"):
        build_resnet_ws("resnet50", "gn_ws", norm_groups=48)
    with pytest.raises(ValueError, match="no pretrained weights for resnet50 with norm 'bn'"):
        build_resnet_ws("resnet50", "bn", pretrained=True)
    with pytest.raises(ValueError, match="unknown arch"):
        build_resnet_ws("resnet18", "gn_ws")
    assert build_resnet_ws("resnet50", "gn_ws", norm_groups=16).layer1[0].bn1.num_groups == 16


def test_pretrained_load_checks_the_fit_once(tmp_path, monkeypatch):
    """One key and shape check per load: the builder's, with this family's options."""
    import nfzoo.models.resnet_ws as resnet_ws
    import nfzoo.weights.loading as loading

    calls, original = [], loading.check_fits

    def counted(*args, **kwargs):
        calls.append(kwargs.get("describe"))
        return original(*args, **kwargs)
    monkeypatch.setattr(loading, "check_fits", counted)
    monkeypatch.setattr(resnet_ws, "check_fits", counted)
    path = tmp_path / "rn50_gn_ws.pth"
    torch.save(checkpoint("resnet50", False), path)
    timm.create_model("resnet50_gn_ws", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert len(calls) == 1 and calls[0] is not None  # the check that describes both sides
