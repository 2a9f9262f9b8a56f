"""timm's own model checks (its tests/test_models.py), run on the zoo so CI keeps them.

timm checks every registered model: forward, backward (every parameter gets a gradient), default
cfgs (pool size, ``forward_features``, ``reset_classifier``, classifier and first-conv names),
``features_only``, TorchScript, FX forward/backward through its tracer, and TorchScript of the
FX graph. The cfg checks run on every zoo name (built on the meta device, so F6/F7 cost
nothing); the numerical checks run on one model of each block family at a small input, since
the variants of a family differ only in their depth and width tables.
"""
import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules

import nfzoo

# one model per block family, and nfnet_mini for its three stages (output stride 16)
FAMILIES = ["nfnet_f0", "dm_nf_resnet152", "dm_nf_regnet_b0", "resnet50_gn_ws", "resnext50_32x4d_gn_ws",
            "resnet50_bcn_ws", "nfnet_mini"]
ONE_BLOCK_PER_STAGE = dict(depths=(1, 1, 1, 1))
SMALL = dict(nfnet_f0=ONE_BLOCK_PER_STAGE, nfnet_f0_plus=ONE_BLOCK_PER_STAGE, dm_nf_resnet152=ONE_BLOCK_PER_STAGE,
             dm_nf_regnet_b0=ONE_BLOCK_PER_STAGE, nfnet_mini=dict(in_chans=3))
SIZE = 64


def create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL.get(name, {}), **kwargs)


def fx_graph(model: torch.nn.Module) -> torch.fx.GraphModule:
    """``torch.fx`` symbolic tracing with timm's leaf modules and wrapped functions, as timm's tests
    and its ``features_only=True, feature_cls='fx'`` do."""
    tracer = torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions()))
    leaves = tuple(get_notrace_modules())
    tracer.is_leaf_module = lambda m, qualname: isinstance(m, leaves) or torch.fx.Tracer.is_leaf_module(
        tracer, m, qualname)
    return torch.fx.GraphModule(model, tracer.trace(model))


@pytest.mark.parametrize("name", sorted(nfzoo.ZOO_MODELS))
def test_default_cfgs(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg, keys = model.pretrained_cfg, model.state_dict().keys()
    assert cfg["classifier"] + ".weight" in keys and cfg["first_conv"] + ".weight" in keys
    assert len(cfg["pool_size"]) == 2 and len(cfg["input_size"]) == 3


@pytest.mark.parametrize("name", sorted(nfzoo.ZOO_MODELS))
def test_features_only_defaults_to_every_level(name):
    """timm's features test builds every model with ``features_only=True`` and no out_indices:
    that must give each of the model's feature levels, however few stages it has (nfnet_mini: 3)."""
    with torch.device("meta"):
        levels = timm.create_model(name).feature_info
        features = timm.create_model(name, features_only=True)
    assert features.feature_info.channels() == [level["num_chs"] for level in levels]
    assert features.feature_info.reduction() == [level["reduction"] for level in levels]


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_features_and_reset_classifier(name):
    model = create(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    out_size = SIZE // model.feature_info[-1]["reduction"]
    with torch.no_grad():
        assert model.forward_features(x).shape[-2:] == (out_size, out_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == (out_size, out_size)


@pytest.mark.parametrize("name", FAMILIES)
def test_backward_reaches_every_parameter(name):
    model = create(name, num_classes=42).train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", FAMILIES)
def test_features_only(name):
    for feature_cls in (None, "fx"):
        kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
        model = create(name, features_only=True, **kwargs).eval()
        with torch.no_grad():
            outs = model(torch.randn(1, 3, SIZE, SIZE))
        assert [o.shape[1] for o in outs] == model.feature_info.channels()
        assert [SIZE // o.shape[-1] for o in outs] == model.feature_info.reduction()


@pytest.mark.parametrize("name", FAMILIES)
def test_torchscript_fx_and_torchscript_of_fx(name):
    model = create(name, num_classes=10).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        graph = fx_graph(model)
        torch.testing.assert_close(graph(x), expected)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        torch.testing.assert_close(torch.jit.script(graph)(x), expected)
    model.train()
    fx_graph(model)(torch.randn(2, 3, SIZE, SIZE)).mean().backward()  # FX backward, as timm's suite
    assert all(p.grad is not None for p in model.parameters())


def test_input_checks_survive_tracing_and_scripting():
    """The wrong channel count is still explained in a traced and in a scripted NFNet."""
    model = create("nfnet_f0", num_classes=10).eval()
    wrong = torch.randn(1, 1, SIZE, SIZE)
    for runnable in (fx_graph(model), torch.jit.script(model)):
        with pytest.raises((ValueError, torch.jit.Error), match="in_chans"):
            runnable(wrong)


@pytest.mark.parametrize("name", FAMILIES + ["nfnet_f0_plus"])
def test_plain_fx_tools_trace_without_timms_tracer_settings(name):
    """Tools built on FX that know nothing of timm (``torch.fx.symbolic_trace``, torchvision's
    ``create_feature_extractor`` called as its docs show) trace every family: the WS convs,
    the SAME max-pool of the NF-ResNet stem and the input check; the traced model computes the
    same values."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = create(name, num_classes=10).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected, rtol=0, atol=0)
        last = get_graph_node_names(model)[1][-1]
        features = create_feature_extractor(model, return_nodes={last: "logits"})
        torch.testing.assert_close(features(x)["logits"], expected, rtol=0, atol=0)
