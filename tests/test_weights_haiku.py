"""DeepMind's Haiku release: safe loading, mapping to nfzoo's layout, conversion to safetensors."""
import json
import pickle

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from haiku_nfnet import make_tree, reference_forward, write_pickle
from nfzoo.models.nfnet import NFNet, NFNetCfg
from nfzoo.weights import CheckpointError, ChecksumError
from nfzoo.weights.convert import convert
from nfzoo.weights.haiku import haiku_to_state_dict, load_haiku_params
from nfzoo.weights.files import sha256_file

DEPTHS, WIDTHS, GROUP_WIDTH = (1, 2, 1, 1), (64, 128, 192, 192), 16


def small_nfnet(depths=DEPTHS, final_conv_mult=2.0):
    cfg = NFNetCfg(depths=depths, widths=WIDTHS, group_width=GROUP_WIDTH, final_conv_mult=final_conv_mult)
    return NFNet(cfg, num_classes=10).eval()


@pytest.fixture(scope="module")
def small_tree():
    return make_tree(DEPTHS, WIDTHS, GROUP_WIDTH, num_classes=10)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_small_tree_maps_to_model_that_matches_numpy_reference(small_tree, tmp_path, protocol):
    path = tmp_path / "F_haiku.npz"
    write_pickle(small_tree, path, protocol)
    model = small_nfnet()
    model.load_state_dict(haiku_to_state_dict(load_haiku_params(path), model), strict=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = reference_forward(small_tree, x, DEPTHS, GROUP_WIDTH)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious release file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_pickle_that_runs_code_is_refused_and_code_does_not_run(small_tree, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil_haiku.npz"
    tree = dict(small_tree)
    tree["NFNet/~/linear"] = {"w": _RunsCode(marker)}
    with open(path, "wb") as f:
        pickle.dump(tree, f)

    with pytest.raises(CheckpointError, match="refusing to load global builtins.exec"):
        load_haiku_params(path)
    assert not marker.exists()

    with open(path, "rb") as f:  # the payload is real: a plain unpickler runs it
        pickle.load(f)
    assert marker.read_text() == "pwned"


def test_truncated_pickle_is_a_clear_error(small_tree, tmp_path):
    path = tmp_path / "F_haiku.npz"
    write_pickle(small_tree, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_haiku_params(path)


def test_not_a_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "F_haiku.npz"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="not a Haiku weights pickle|truncated"):
        load_haiku_params(path)


def test_tree_of_another_variant_is_refused_with_depths(small_tree):
    with pytest.raises(CheckpointError, match=r"stage depths \(1, 2, 1, 1\).*\(2, 2, 1, 1\)"):
        haiku_to_state_dict(small_tree, small_nfnet(depths=(2, 2, 1, 1)))


def test_tree_with_wrong_shapes_is_refused(small_tree):
    with pytest.raises(CheckpointError, match="final_conv/w -> final_conv.weight: shape"):
        haiku_to_state_dict(small_tree, small_nfnet(final_conv_mult=1.0))


def test_f0_release_converts_to_safetensors_that_match_the_reference(tmp_path):
    """F0's real shapes (71M parameters): once, end to end through ``convert``."""
    depths = (1, 2, 6, 3)
    tree = make_tree(depths, seed=3)
    source = tmp_path / "F0_haiku.npz"
    write_pickle(tree, source)
    out = tmp_path / "out"

    record = convert(source, "nfnet_f0", out, source_format="haiku-pickle")

    weights = out / "model.safetensors"
    assert record.sha256 == sha256_file(weights)
    assert json.loads((out / "conversion.json").read_text())["sha256"] == record.sha256
    assert record.source_sha256 == sha256_file(source)
    assert round(record.num_params / 1e6, 2) == 71.49  # F0's count, as timm's dm_nfnet_f0 has it
    state_dict = safetensors.torch.load_file(weights)
    model = timm.create_model("nfnet_f0").eval()
    model.load_state_dict(state_dict, strict=True)
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = reference_forward(tree, x, depths)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_conversion_of_a_truncated_release_writes_nothing(small_tree, tmp_path):
    source = tmp_path / "F0_haiku.npz"
    write_pickle(small_tree, source)
    source.write_bytes(source.read_bytes()[:-1000])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="truncated"):
        convert(source, "nfnet_f0", out, source_format="haiku-pickle")
    assert not out.exists() or not any(out.iterdir())


def test_conversion_for_the_wrong_model_writes_nothing(tmp_path):
    source = tmp_path / "F_haiku.npz"
    write_pickle(make_tree((1, 1, 1, 1)), source)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="another NFNet variant"):
        convert(source, "nfnet_f0", out, source_format="haiku-pickle")
    assert not out.exists() or not any(out.iterdir())


def test_release_that_differs_from_the_manifest_md5_is_refused(small_tree, tmp_path):
    source = tmp_path / "F0_haiku.npz"
    write_pickle(small_tree, source)
    with pytest.raises(ChecksumError, match="md5 is [0-9a-f]{32}, but the nfzoo manifest expects md5 0a41039d"):
        convert(source, "nfnet_f0.dm_in1k", tmp_path / "out")
    assert not (tmp_path / "out").exists()
