"""nfzoo in timm's registry: what it adds and replaces, and what it leaves exactly as it was."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm

import torch

import nfzoo
from nfzoo.models import _registry
from nfzoo.weights import manifest

SNAPSHOT = textwrap.dedent("""
    import json, sys, warnings
    import timm
    from timm.models import get_pretrained_cfg, model_entrypoint

    def snapshot():
        out = {}
        for name in timm.list_models(pretrained=True):
            fn = model_entrypoint(name.split('.')[0])
            cfg = get_pretrained_cfg(name).to_dict()
            out[name] = [f'{fn.__module__}.{fn.__qualname__}', json.dumps(cfg, sort_keys=True, default=str)]
        return out

    before = snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import nfzoo
    after = snapshot()
    json.dump(dict(before=before, after=after, warnings=[str(w.message) for w in caught],
                   replaced=sorted(nfzoo.REPLACED_TIMM_MODELS)), sys.stdout)
""")


@pytest.fixture(scope="module")
def registry_before_after():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_timm_models_with_weights_resolve_as_before(registry_before_after):
    before, after = registry_before_after["before"], registry_before_after["after"]
    assert before and all(after.get(name) == entry for name, entry in before.items())
    added = set(after) - set(before)
    assert added == set(manifest())  # exactly the zoo's pretrained tags are new
    assert all(after[name][0].startswith("nfzoo.models.") for name in added)


def test_weightless_nfnets_are_replaced_silently(registry_before_after):
    assert registry_before_after["replaced"] == [f"nfnet_f{i}" for i in range(8)]
    assert not any("nfnet" in w or "Overwriting" in w for w in registry_before_after["warnings"])


def test_listing_and_tags():
    assert timm.list_models("nfnet_f?") == [f"nfnet_f{i}" for i in range(8)]
    assert timm.list_models("nfnet_f*_plus") == [f"nfnet_f{i}_plus" for i in range(8)]
    assert timm.list_models("dm_nf_regnet_b*") == [f"dm_nf_regnet_b{i}" for i in range(9)]
    assert not timm.list_models("nfnet_f*_plus", pretrained=True) + timm.list_models("dm_nf_regnet*", pretrained=True)
    assert timm.list_models("nfnet_f*", pretrained=True) == [f"nfnet_f{i}.dm_in1k" for i in range(7)]
    assert all(timm.models.model_entrypoint(f"nfnet_f{i}").__module__ == "nfzoo.models.nfnet" for i in range(8))
    assert timm.models.model_entrypoint("nf_regnet_b0").__module__ == "timm.models.nfnet"  # timm's design stays
    with torch.device("meta"):
        model = timm.create_model("nfnet_f1.dm_in1k")
    assert model.pretrained_cfg["tag"] == "dm_in1k" and model.pretrained_cfg["architecture"] == "nfzoo_nfnet_f1"
    assert nfzoo.ZOO_MODELS >= {"nfnet_f0", "dm_nf_resnet50", "dm_nf_resnet152", "dm_nf_resnet600"}


def test_policy_refuses_to_replace_a_timm_model_with_weights():
    def nf_resnet50(pretrained=False, **kwargs):
        raise AssertionError("never registered")
    nf_resnet50.__module__ = "nfzoo.models.test_fake"
    with pytest.raises(RuntimeError, match="nf_resnet50.*pretrained weights"):
        _registry.register_zoo_model(nf_resnet50)
    assert timm.models.model_entrypoint("nf_resnet50").__module__ == "timm.models.nfnet"
