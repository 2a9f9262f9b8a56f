"""The weights manifest: complete, well-formed, and agreeing with the published numbers."""
import re

import pytest

from nfzoo.weights import manifest
from nfzoo.weights.manifest import paper

# The NFNet paper (arXiv 2102.06171, Table 3) and Qiao et al.'s released GN+WS errors
# (arXiv 1903.10520, their release's model table), as 100 - error.
EXPECTED = {
    "nfnet_f0.dm_in1k": (83.6, 96.8, 256), "nfnet_f1.dm_in1k": (84.7, 97.1, 320),
    "nfnet_f2.dm_in1k": (85.1, 97.3, 352), "nfnet_f3.dm_in1k": (85.7, 97.5, 416),
    "nfnet_f4.dm_in1k": (85.9, 97.6, 512), "nfnet_f5.dm_in1k": (86.0, 97.6, 544),
    "nfnet_f6.dm_in1k": (86.5, 97.9, 576),
    "resnet50_gn_ws.jhu_in1k": (76.28, 93.01, 224), "resnet101_gn_ws.jhu_in1k": (77.90, 93.93, 224),
    "resnext50_32x4d_gn_ws.jhu_in1k": (77.29, 93.62, 224), "resnext101_32x4d_gn_ws.jhu_in1k": (78.20, 93.97, 224),
}


@pytest.mark.parametrize("name", sorted(manifest()))
def test_entry_is_complete(name):
    c = manifest()[name]
    assert c.hf_hub_id or c.url or c.file, "nowhere to load the weights from"
    assert c.source_url and c.source_format in ("haiku-pickle", "ws-pth", "openmmlab", "nfzoo-trained")
    if c.file:  # shipped in the package: the file, its full sha256 and what it was measured on
        assert c.file_path.is_file() and c.sha256 and len(c.sha256) == 64 and c.top1 and c.eval_images
    assert c.publish_repo == f"nfzoo/{name}"
    assert c.license and paper(c.paper).bibtex.startswith("@")
    for digest, lengths in ((c.sha256, (8, 64)), (c.source_sha256, (64,)), (c.source_md5, (32,))):
        assert digest is None or (re.fullmatch("[0-9a-f]+", digest) and len(digest) in lengths)
    if c.source_format == "openmmlab":  # the file name carries the sha256 prefix
        assert c.sha256 and c.url.endswith(f"-{c.sha256}.pth")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_accuracy_and_eval_size_match_the_reference(name):
    c = manifest()[name]
    assert (c.top1, c.top5, c.test_size) == EXPECTED[name]
    mirror = manifest().get(name.replace("jhu_in1k", "mmlab_in1k"))
    if mirror is not None and mirror is not c:
        assert (mirror.top1, mirror.top5) == (c.top1, c.top5)



@pytest.mark.parametrize("name", [n for n in sorted(manifest()) if n.startswith("nfnet_f")])
def test_nfnet_eval_resizes_to_test_size_plus_32(name):
    """DeepMind resized to test px + 32 before the centre crop; timm floors size / crop_pct."""
    import timm
    from timm.data import create_transform, resolve_data_config

    import nfzoo  # noqa: F401  (registers the pretrained cfgs)

    cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict(), use_test_size=True)
    test_size = manifest()[name].test_size
    assert cfg["input_size"][-1] == test_size
    assert cfg["crop_mode"] == "squash"
    assert tuple(create_transform(**cfg).transforms[0].size) == (test_size + 32,) * 2


def test_every_source_named_by_its_sha256_prefix_records_it():
    """OpenMMLab names files ``<name>-<first 8 hex digits of the sha256>.pth``; the manifest records that prefix."""
    named = {n: m[1] for n, e in manifest().items() if (m := re.search(r"-([0-9a-f]{8})\.pth$", e.source_url))}
    assert named
    for name, prefix in named.items():
        assert manifest()[name].source_digest == ("sha256", prefix)
