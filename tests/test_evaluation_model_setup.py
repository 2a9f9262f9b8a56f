"""Model names the harness accepts, and the manifest entry it checks each against."""
import pytest

from nfzoo.evaluation import EvaluationError
from nfzoo.evaluation.model_setup import expand_model_names, expected_accuracy
from nfzoo.weights.manifest import manifest


def test_globs_expand_over_the_zoo_checkpoints():
    nfnets = expand_model_names(["nfnet_f*"])
    assert nfnets == [f"nfnet_f{i}.dm_in1k" for i in range(7)]
    assert expand_model_names(["*_gn_ws.jhu_in1k", "nfnet_f0", "nfnet_f0"]) == [
        "resnet101_gn_ws.jhu_in1k", "resnet50_gn_ws.jhu_in1k", "resnext101_32x4d_gn_ws.jhu_in1k",
        "resnext50_32x4d_gn_ws.jhu_in1k", "nfnet_f0"]
    with pytest.raises(EvaluationError, match="matches no checkpoint"):
        expand_model_names(["vit_*"])


@pytest.mark.parametrize("name, entry", [
    ("nfnet_f1.dm_in1k", "nfnet_f1.dm_in1k"),
    ("hf-hub:timm/dm_nfnet_f2.dm_in1k", "nfnet_f2.dm_in1k"),
    ("hf-hub:nfzoo/resnet50_gn_ws.jhu_in1k", "resnet50_gn_ws.jhu_in1k"),
    ("test_resnet", None),
    ("hf-hub:someone/else", None),
])
def test_expected_accuracy_entry(name, entry):
    found = expected_accuracy(name)
    assert (found and found.name) == entry
    if entry:
        assert found is manifest()[entry]
