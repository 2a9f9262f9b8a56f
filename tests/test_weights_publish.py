"""The authors' WS/BCN releases convert; converted weights publish to a folder that timm loads
through hf-hub: (from an offline cache) and through file=."""
import dataclasses
import errno
import json
import os
import re
import shutil
import stat
import sys

import pytest
import safetensors.torch
import timm
import torch

import nfzoo  # noqa: F401
from nfzoo.atomic_files import DiskFullError, UnsafeOutputError
from hub_cache import add_to_hf_cache
from nfzoo.weights import CheckpointError, ChecksumError, checkpoint, manifest
from nfzoo.weights import publish
from nfzoo.weights.convert import convert
from nfzoo.weights.files import sha256_file
from nfzoo.weights.publish import Measured, write_repo


def release(model_name, tmp_path, wrap):
    """A random model's weights saved in a release's layout (``wrap`` maps the state dict)."""
    model = timm.create_model(model_name).eval()
    path = tmp_path / f"{model_name}.pth.tar"
    torch.save(wrap(model.state_dict()), path)
    return model, path


def authors(state_dict):  # DataParallel state dict, as the JHU .pth.tar / .pth files
    return {f"module.{k}": v for k, v in state_dict.items()}


def openmmlab(state_dict):  # {'state_dict': ...} with GroupNorm layers named gn1..gn3
    return {"state_dict": {re.sub(r"(^|\.)bn(\d)\.", r"\1gn\2.", k): v for k, v in state_dict.items()}}


def assert_same_weights(path, model):
    torch.testing.assert_close(safetensors.torch.load_file(path), dict(model.state_dict()))


@pytest.mark.parametrize("name", ["resnet50_gn_ws.jhu_in1k", "resnet50_bcn_ws.jhu_in1k"])
def test_authors_release_converts_and_loads_strictly(tmp_path, name):
    model, source = release(name.split(".")[0], tmp_path, authors)
    record = convert(source, name, tmp_path / "out")
    assert_same_weights(tmp_path / "out" / "model.safetensors", model)
    assert record.sha256 == sha256_file(tmp_path / "out" / "model.safetensors")


def test_openmmlab_mirror_is_checked_against_its_sha256_prefix(tmp_path, monkeypatch):
    name = "resnet50_gn_ws.mmlab_in1k"
    model, source = release("resnet50_gn_ws", tmp_path, openmmlab)
    with pytest.raises(ChecksumError, match="sha256 prefix \\(8 hex digits\\) 15beedd8"):
        convert(source, name, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    entry = dataclasses.replace(checkpoint(name), sha256=sha256_file(source)[:8])
    monkeypatch.setattr("nfzoo.weights.convert.manifest", lambda: {**manifest(), name: entry})
    convert(source, name, tmp_path / "out")
    assert_same_weights(tmp_path / "out" / "model.safetensors", model)


def test_release_of_another_model_is_refused_and_nothing_written(tmp_path):
    _, source = release("resnet50_gn_ws", tmp_path, authors)
    with pytest.raises(ValueError, match="another model"):
        convert(source, "resnet101_gn_ws.jhu_in1k", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint_is_refused(tmp_path):
    source = tmp_path / "R-50-GN-WS.pth.tar"
    source.write_text("<html>moved</html>")
    with pytest.raises(CheckpointError, match="weights_only|not a checkpoint"):
        convert(source, "resnet50_gn_ws.jhu_in1k", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def record_source_digest(monkeypatch, name: str, **digest) -> None:
    """Make the manifest entry ``name`` record ``digest`` (e.g. ``source_sha256=...``) for its source."""
    entry = dataclasses.replace(checkpoint(name), **digest)
    entries = {**manifest(), name: entry}
    for module in ("nfzoo.weights.manifest", "nfzoo.weights.convert"):  # the module, not the function
        monkeypatch.setattr(sys.modules[module], "manifest", lambda: entries)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Random weights released as the JHU file, with the manifest recording that file's sha256."""
    tmp_path = tmp_path_factory.mktemp("publish")
    name = "resnet50_gn_ws.jhu_in1k"
    model, source = release("resnet50_gn_ws", tmp_path, authors)
    with pytest.MonkeyPatch.context() as monkeypatch:
        record_source_digest(monkeypatch, name, source_sha256=sha256_file(source))
        convert(source, name, tmp_path / "converted")
        folder = write_repo(tmp_path / "converted", name, tmp_path / "hub", Measured(76.1, 92.9, "test harness"))
    return model, folder


def test_repo_folder_has_weights_timm_config_and_model_card(published):
    model, folder = published
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("nfzoo_resnet50_gn_ws", 1000, 2048)
    assert "num_classes" not in config["model_args"]  # transformers passes its own next to **model_args
    assert config["pretrained_cfg"]["tag"] == "jhu_in1k"
    assert config["pretrained_cfg"]["interpolation"] == "bilinear"
    requires = config["nfzoo"]["requires"]
    assert "pip install ." in requires and "import nfzoo" in requires and "pip install nfzoo" not in requires


def test_card_of_the_verified_conversion_states_source_and_accuracy(published):
    _, folder = published
    card = (folder / "README.md").read_text()
    entry = checkpoint("resnet50_gn_ws.jhu_in1k")
    record = json.loads((folder.parent / "converted" / "conversion.json").read_text())
    for fact in (entry.source_url, "released by the paper's authors", "| 76.28 | 93.01 |",
                 "| measured (test harness) | 76.10 | 92.90 |", "@article{qiao2019micro",
                 "license: other", "the source file's sha256 matches the nfzoo manifest's",
                 'timm.create_model("hf-hub:nfzoo/resnet50_gn_ws.jhu_in1k", pretrained=True)'):
        assert fact in card
    assert_one_sha256_per_file(card, [record["source_sha256"], sha256_file(folder / "model.safetensors")])


def assert_one_sha256_per_file(card: str, files: list[str]) -> None:
    """The card names the sha256 of each of ``files`` once, and no other (the converted file is not published)."""
    digests = re.findall(r"\b[0-9a-f]{64}\b", card)
    assert sorted(digests) == sorted(files), digests


def _states_nothing_of_the_source(card: str, entry) -> None:
    assert "could not be verified" in card
    for claim in (entry.source_url, "released by", "trained by", _percent(entry.top1), entry.accuracy_source or "expected"):
        assert claim not in card


def _percent(value):
    return "no figure" if value is None else f"{value:.2f}"


def test_card_of_random_weights_states_no_provenance_or_accuracy(tmp_path):
    name = "resnet50_gn_ws.jhu_in1k"
    (tmp_path / "random").mkdir()
    safetensors.torch.save_file(timm.create_model("resnet50_gn_ws").state_dict(), tmp_path / "random" / "model.safetensors")
    card = (write_repo(tmp_path / "random", name, tmp_path / "hub") / "README.md").read_text()
    _states_nothing_of_the_source(card, checkpoint(name))
    assert "no conversion record" in card


def test_card_of_a_file_that_is_not_the_conversion_states_no_provenance(published, tmp_path):
    """The conversion record is there, but the file beside it is another one (sha256 differs)."""
    name = "resnet50_gn_ws.jhu_in1k"
    foreign = tmp_path / "foreign"
    shutil.copytree(published[1].parent / "converted", foreign)
    state = safetensors.torch.load_file(foreign / "model.safetensors")
    state["fc.bias"] += 1
    safetensors.torch.save_file(state, foreign / "model.safetensors")
    card = (write_repo(foreign, name, tmp_path / "hub") / "README.md").read_text()
    _states_nothing_of_the_source(card, checkpoint(name))
    assert "sha256 differs from the one its conversion produced" in card


def test_repo_folder_has_the_usual_permissions(published):
    _, folder = published
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o666 & ~umask}


def test_config_gives_clients_the_evaluation_preprocessing():
    """timm writes the training size as input_size and the test size apart; the published config
    makes the test size the input size, which transformers' image processor (which resolves
    ``pretrained_cfg`` as data args, without use_test_size) and timm's default both read."""
    entry = checkpoint("nfnet_f0.dm_in1k")
    written = {"architecture": "nfzoo_nfnet_f0", "num_classes": 1000,
               "model_args": {"num_classes": 1000, "in_chans": 3, "global_pool": "avg"},
               "pretrained_cfg": {"input_size": [3, 192, 192], "test_input_size": [3, 256, 256], "pool_size": [6, 6],
                                  "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}}
    config = publish.hub_config(written, entry)
    data = timm.data.resolve_data_config(config["pretrained_cfg"], model=None)
    assert data["input_size"] == (3, entry.test_size, entry.test_size) == (3, 256, 256)
    assert (data["crop_pct"], data["crop_mode"], data["interpolation"]) == (entry.crop_pct, entry.crop_mode, entry.interpolation)
    assert config["model_args"] == {"in_chans": 3, "global_pool": "avg"}
    assert written["model_args"]["num_classes"] == 1000  # the caller's dict is left alone


def test_published_folder_loads_through_hf_hub_from_an_offline_cache(published, hf_cache):
    model, folder = published
    add_to_hf_cache(hf_cache, "nfzoo/resnet50_gn_ws.jhu_in1k", {p.name: p for p in folder.iterdir()})
    loaded = timm.create_model("hf-hub:nfzoo/resnet50_gn_ws.jhu_in1k", pretrained=True)
    assert type(loaded) is type(model)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_published_weights_load_through_file(published):
    model, folder = published
    loaded = timm.create_model("resnet50_gn_ws", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_weights_of_another_model_are_not_published(published, tmp_path):
    _, folder = published
    with pytest.raises(ValueError, match="another architecture|does not fit"):
        write_repo(folder, "resnet101_gn_ws.jhu_in1k", tmp_path / "hub")
    assert list(tmp_path.iterdir()) == []


def test_upload_creates_the_repo_and_uploads_the_folder(published, monkeypatch):
    _, folder = published
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create_repo", repo_id, exist_ok, private))

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            calls.append(("upload_folder", repo_id, folder_path, allow_patterns))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(publish, "HfApi", FakeApi)
    url = publish.upload(folder, "nfzoo/resnet50_gn_ws.jhu_in1k")
    assert calls == [("create_repo", "nfzoo/resnet50_gn_ws.jhu_in1k", True, False),
                     ("upload_folder", "nfzoo/resnet50_gn_ws.jhu_in1k", str(folder),
                      ["model.safetensors", "config.json", "README.md"])]
    assert url.endswith("/commit/1")


# ----------------------------------------------------------------------------- provenance rules

def _converted(tmp_path, name, **record):
    """A weights file with a conversion record for ``name`` that names it; ``record`` adds digests."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"converted weights")
    return weights, {"name": name, "sha256": sha256_file(weights), **record}


def test_a_source_the_manifest_has_no_digest_for_is_not_verified(tmp_path):
    """The JHU files have no recorded digest: whatever was converted, the card cannot vouch for it."""
    entry = checkpoint("resnet50_gn_ws.jhu_in1k")
    assert entry.source_digest is None
    weights, record = _converted(tmp_path, entry.name, source_sha256="ab" * 32)
    origin = publish.provenance(entry, weights, record)
    assert not origin.verified and "records no digest" in origin.reason
    card = publish.model_card(entry, origin, None, num_params=1, published_sha256="cd" * 32)
    _states_nothing_of_the_source(card, entry)
    assert_one_sha256_per_file(card, ["cd" * 32])


@pytest.mark.parametrize("name, key", [("resnet50_gn_ws.mmlab_in1k", "source_sha256"),
                                       ("nfnet_f0.dm_in1k", "source_md5")])
def test_the_record_must_match_the_manifests_source_digest(tmp_path, name, key):
    """OpenMMLab's sha256 prefix (from its file name) and DeepMind's md5 are what the record must match."""
    entry = checkpoint(name)
    algorithm, expected = entry.source_digest
    assert key == f"source_{algorithm}"
    full = expected + "0" * ((64 if algorithm == "sha256" else 32) - len(expected))
    other = "f" + full[1:]
    weights, record = _converted(tmp_path, name, **{"source_sha256": "12" * 32, key: full})
    origin = publish.provenance(entry, weights, record)
    assert origin.verified and entry.source_url in origin.source, origin
    assert not publish.provenance(entry, weights, {**record, key: other}).verified
    assert not publish.provenance(entry, weights, {k: v for k, v in record.items() if k != key}).verified


# ----------------------------------------------------------------------------- the output folder

@pytest.fixture
def demo_weights(tmp_path):
    """The shipped demo checkpoint (its sha256 is in the manifest) as a folder to publish."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(checkpoint(DEMO).file_path, folder / "model.safetensors")
    return folder


DEMO = "nfnet_mini.nfzoo_fmnist"


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_publishing_into_a_folder_that_holds_files_keeps_them(demo_weights, tmp_path):
    out = tmp_path / "hub"
    (out / "sub").mkdir(parents=True)
    (out / "precious.txt").write_text("mine")
    (out / "README.md").write_text("an old card")
    before = _tree(tmp_path)
    with pytest.raises(UnsafeOutputError, match="already holds files"):
        write_repo(demo_weights, DEMO, out)
    assert _tree(tmp_path) == before
    write_repo(demo_weights, DEMO, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "precious.txt",
                                                      "sub"]
    assert (out / "precious.txt").read_text() == "mine" and "an old card" not in (out / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_card_of_the_shipped_file_is_verified_and_names_each_sha256_once(demo_weights, tmp_path):
    card = (write_repo(demo_weights, DEMO, tmp_path / "hub") / "README.md").read_text()
    assert "Verified: the file's sha256 matches the nfzoo manifest's" in card
    assert_one_sha256_per_file(card, [checkpoint(DEMO).sha256, sha256_file(tmp_path / "hub" / "model.safetensors")])


@pytest.mark.parametrize("where", ["a file", "the weights folder", "inside it", "above it"])
def test_an_output_folder_that_could_harm_the_input_is_refused(demo_weights, tmp_path, where):
    out = {"a file": demo_weights / "model.safetensors", "the weights folder": demo_weights,
           "inside it": demo_weights / "hub", "above it": tmp_path}[where]
    before = _tree(tmp_path)
    with pytest.raises(UnsafeOutputError):
        write_repo(demo_weights, DEMO, out, overwrite=True)
    assert _tree(tmp_path) == before


def test_a_full_disk_while_publishing_leaves_nothing(demo_weights, tmp_path, monkeypatch):
    real_open = open

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(publish, "open", full, raising=False)
    out = tmp_path / "hub"
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {out}"):
        write_repo(demo_weights, DEMO, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]
