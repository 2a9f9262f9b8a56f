"""A user's own model end to end, at a tiny size (docs/own_model.md): fine-tune a zoo model on an
image folder (``python -m nfzoo.train``), validate the run's checkpoint (``nfzoo-validate
--checkpoint``), publish it (``weights/publish.py --checkpoint --results-file``), and load the
published folder in timm (``hf-hub:`` from an offline Hub cache, and ``file=``) and transformers
(``AutoModelForImageClassification``, ``pipeline``). Every client must give the logits of the
trained weights as a plain ``load_state_dict`` of the checkpoint gives them, and the class names.

Two runs: the shipped pretrained ``nfnet_mini.nfzoo_fmnist`` on a 1-channel folder of 3 classes,
and ``nfnet_mini`` from random weights on a 3-channel folder of 2 classes. Also: a fused model
saves with timm's ``save_for_hf`` and loads into a fused model; ``weights/train_demo.py`` runs.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

import nfzoo
from cli_helpers import assert_one_line_error
from hub_cache import add_to_hf_cache
from nfzoo.evaluation.validate_cli import main as validate
from nfzoo.train.run_state import load_checkpoint
from nfzoo.train.train_cli import main as train

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = {"train": 4, "val": 2}
RUNS = {  # name: (model, --pretrained, channels, classes)
    "gray": ("nfnet_mini.nfzoo_fmnist", True, 1, 3),
    "rgb": ("nfnet_mini", False, 3, 2),
}
TINY = ["--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0", "--num-workers", "0", "--no-progress",
        "--no-plot", "--randaugment-magnitude", "none"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"weights_{name}_script", REPO_ROOT / "weights" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


publish_cli, train_demo = _script("publish"), _script("train_demo")


def make_folder(root: Path, channels: int, classes: int, seed: int) -> list[str]:
    """``root/{train,val}/<class>/<n>.png`` of random 28 px images; returns the class names."""
    rng = np.random.default_rng(seed)
    names = [f"kind_{chr(ord('a') + c)}" for c in range(classes)]
    shape = (28, 28) if channels == 1 else (28, 28, 3)
    for split, count in PER_CLASS.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for n in range(count):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / name / f"{n}.png")
    return names


def reference_inputs(folder: Path, config: dict) -> tuple[torch.Tensor, list[int]]:
    """The val images as the run validated them, written out: 28 px files need no resize or
    crop, so ``(pixel / 255 - mean) / std`` per channel, in the file's own mode."""
    paths = sorted(folder.glob("*/*.png"))
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    images = [torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255) for p in paths]
    x = torch.stack([(im[None] if im.dim() == 2 else im.permute(2, 0, 1)) for im in images])
    labels = [config["label_names"].index(p.parent.name) for p in paths]
    return (x - mean) / std, labels


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, tmp_path_factory):
    """Train, validate and publish one run; the trained model rebuilt by plain timm +
    ``load_state_dict`` of the checkpoint's ``model``, and the published folder in an offline cache."""
    name = request.param
    model_name, pretrained, channels, classes = RUNS[name]
    tmp = tmp_path_factory.mktemp(name)
    class_names = make_folder(tmp / "data", channels, classes, seed=len(name))
    out = tmp / "run"
    assert train(["--model", model_name, "--dataset", "folder", "--data-dir", str(tmp / "data"), "--output-dir",
                  str(out), *(["--pretrained"] if pretrained else []), *TINY]) == 0
    results = out / "val.json"
    assert validate(["--checkpoint", str(out / "last.pth"), "--data-dir", str(tmp / "data" / "val"),
                     "--workers", "0", "--no-progress", "--results-file", str(results)]) == 0
    repo = f"someone/own-{name}"
    assert publish_cli.main(["--checkpoint", str(out / "last.pth"), "--repo", repo, "--out", str(tmp / "hub"),
                             "--results-file", str(results), "--dry-run"]) == 0
    cache = tmp / "hf_cache"
    add_to_hf_cache(cache, repo, {p.name: p for p in (tmp / "hub").iterdir()})

    saved = load_checkpoint(out / "last.pth")
    config = json.loads((out / "model_config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"],
                              in_chans=config["in_chans"]).eval()
    model.load_state_dict(saved["model"])
    x, labels = reference_inputs(tmp / "data" / "val", config)
    with torch.no_grad():
        logits = model(x)
    with pytest.MonkeyPatch.context() as mp:  # timm's hf-hub: reads only this offline cache
        mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
        mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        yield dict(name=name, model_name=model_name, pretrained=pretrained, channels=channels,
                   class_names=class_names, tmp=tmp, out=out, results=results, hub=tmp / "hub", repo=repo,
                   config=config, model=model, x=x, labels=labels, logits=logits)


def test_run_records_the_folders_classes_and_channels(run):
    config = run["config"]
    assert (config["num_classes"], config["in_chans"], config["label_names"]) == (
        len(run["class_names"]), run["channels"], run["class_names"])
    assert config["input_size"] == [run["channels"], 28, 28] and len(config["mean"]) == run["channels"]


def test_validate_measures_the_checkpoint_as_its_run_preprocessed(run):
    """Top-1 and top-5 of the results file are those of the reference logits (the checkpoint's
    own preprocessing, written out), and the row claims no manifest tag or expected accuracy."""
    (row,) = json.loads(run["results"].read_text())
    labels = torch.tensor(run["labels"])
    top = run["logits"].topk(min(5, len(run["class_names"])), dim=1).indices
    top1 = 100 * (top[:, 0] == labels).float().mean().item()
    top5 = 100 * (top == labels[:, None]).any(dim=1).float().mean().item()
    assert (row["top1"], row["top5"]) == (round(top1, 3), round(top5, 3))
    assert row["images"] == len(labels) and row["weights"] == "checkpoint"
    assert row["tag"] is None and row["expected_top1"] is None and row["check"] is None


def test_validate_check_refuses_a_training_checkpoint(run, capsys):
    assert_one_line_error(validate, ["--checkpoint", str(run["out"] / "last.pth"), "--data-dir",
                                     str(run["tmp"] / "data" / "val"), "--check"], capsys, "published accuracy")


def test_published_config_gives_class_names_channels_and_preprocessing(run):
    config = json.loads((run["hub"] / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == "nfzoo_nfnet_mini" and config["num_classes"] == len(run["class_names"])
    assert config["label_names"] == run["class_names"] and "label_names" not in cfg
    assert config["model_args"]["in_chans"] == run["channels"] and "num_classes" not in config["model_args"]
    assert {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")} == {
        k: run["config"][k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")}
    # nothing of the weights the run started from (the demo's tag, license, origin) is claimed
    assert not {"tag", "license", "origin_url"} & set(cfg) and "tag" not in config["nfzoo"]
    weights = (run["hub"] / "model.safetensors").read_bytes()
    assert safetensors.torch.load(weights).keys() == run["model"].state_dict().keys()


def test_card_states_the_run_and_the_accuracy_measured_on_its_data(run):
    card = (run["hub"] / "README.md").read_text()
    (row,) = json.loads(run["results"].read_text())
    measured = re.search(r"^\| measured \((.*)\) \| ([\d.]+) \| ([\d.]+) \|$", card, re.M)
    assert measured and (float(measured[2]), float(measured[3])) == (round(row["top1"], 2), round(row["top5"], 2))
    assert row["data"] in measured[1] and f"({row['images']} images)" in measured[1]
    start = "the pretrained weights `nfnet_mini.nfzoo_fmnist`" if run["pretrained"] else "random initial weights"
    assert start in card and f"# {run['repo']}" in card
    assert ", ".join(f"`{n}`" for n in run["class_names"]) in card
    assert hashlib.sha256((run["hub"] / "model.safetensors").read_bytes()).hexdigest() in card
    assert ('pipeline("image-classification"' in card) == (run["channels"] == 1)


def test_timm_loads_the_folder_from_the_hub_and_from_a_file(run):
    hub = timm.create_model(f"hf-hub:{run['repo']}", pretrained=True).eval()
    assert list(hub.pretrained_cfg["label_names"]) == run["class_names"]
    assert timm.data.resolve_data_config({}, model=hub)["input_size"] == (run["channels"], 28, 28)
    classes = len(run["class_names"])  # the overlay's too: timm resets a classifier of another class count
    from_file = timm.create_model("nfnet_mini", pretrained=True, num_classes=classes, in_chans=run["channels"],
                                  pretrained_cfg_overlay=dict(file=str(run["hub"] / "model.safetensors"),
                                                              num_classes=classes)).eval()
    with torch.no_grad():
        for model in (hub, from_file):
            torch.testing.assert_close(model(run["x"]), run["logits"], rtol=0, atol=0)


def test_transformers_model_and_pipeline_give_the_logits_and_class_names(run):
    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(str(run["hub"])).eval()
    assert list(model.config.id2label.values()) == run["class_names"]
    with torch.no_grad():
        torch.testing.assert_close(model(run["x"]).logits, run["logits"], rtol=0, atol=0)

    classifier = pipeline("image-classification", model=str(run["hub"]))
    image = Image.open(sorted((run["tmp"] / "data" / "val").glob("*/*.png"))[0])
    given = np.asarray(image)[:, :, None] if run["channels"] == 1 else image  # the card's way for 1 channel
    scores = {r["label"]: r["score"] for r in classifier(given)}
    expected = dict(zip(run["class_names"], run["logits"][0].softmax(0).tolist()))
    assert scores.keys() == expected.keys()
    assert all(abs(scores[k] - expected[k]) < 1e-6 for k in expected)
    if run["channels"] == 1:  # an RGB image: refused naming the channels, not a conv traceback
        with pytest.raises(ValueError, match="in_chans=1"):
            classifier(image)


def test_fused_model_saves_with_timm_and_loads_into_a_fused_model(run, tmp_path):
    fused = nfzoo.fuse(run["model"])
    timm.models.save_for_hf(fused, tmp_path, safe_serialization=True)
    config = run["config"]
    fresh = nfzoo.fuse(timm.create_model(config["architecture"], num_classes=config["num_classes"],
                                         in_chans=config["in_chans"]).eval())
    fresh.load_state_dict(safetensors.torch.load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(fresh(run["x"]), fused(run["x"]), rtol=0, atol=0)
        torch.testing.assert_close(fresh(run["x"]), run["logits"], rtol=1e-4, atol=1e-4)
    assert fused.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # fused as before


@pytest.fixture
def published(run, tmp_path):
    """Files for the publish CLI's errors: a plain state dict and a results file of two rows."""
    (tmp_path / "in").mkdir()  # apart from the output folder
    plain = tmp_path / "in" / "plain.pth"
    torch.save(run["model"].state_dict(), plain)
    two_rows = tmp_path / "in" / "two.json"
    two_rows.write_text(json.dumps(json.loads(run["results"].read_text()) * 2))
    return dict(C=str(run["out"] / "last.pth"), R=str(run["results"]), P=str(plain), T=str(two_rows),
                W=str(run["hub"]), O=str(tmp_path / "o"))


@pytest.mark.parametrize("argv, expect", [
    ("--checkpoint missing.pth --repo a/b --out O", "--checkpoint"),
    ("--checkpoint C --repo a/b --out O --results-file missing.json", "--results-file"),
    ("--checkpoint C --out O", "--repo"),
    ("--checkpoint C --repo a/b --name nfnet_mini.nfzoo_fmnist --out O", "--name"),
    ("W --checkpoint C --repo a/b --out O", "either"),
    ("W --out O", "--name"),
    ("--repo a/b --out O", "either"),
    ("--checkpoint C --repo a/b --out O --results-file R --measured 1 2 x", "--measured"),
    ("--checkpoint P --repo a/b --out O", "model_config"),
    ("--checkpoint C --repo a/b --out O --results-file T", "2 results"),
])
def test_publish_checkpoint_bad_argument_is_one_line(run, published, capsys, argv, expect):
    if run["name"] != "gray":
        pytest.skip("the argument checks do not depend on the run")
    args = [published.get(a, a) for a in argv.split()]
    assert_one_line_error(publish_cli.main, args, capsys, expect)
    assert not Path(published["O"]).exists()


def _write_idx(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_train_demo_retrains_exports_and_measures_at_a_tiny_size(tmp_path, capsys):
    """weights/train_demo.py end to end on 16 training and 10 test images of random Fashion-MNIST
    files: the weights it writes are the run's, its sample holds the test images, and the
    manifest lines it prints are the file's sha256 and the sample's accuracy."""
    data = tmp_path / "fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("t10k", 10)):
        _write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        _write_idx(data / f"{split}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))
    weights, sample = tmp_path / "demo.safetensors", tmp_path / "sample"
    assert train_demo.main(["--data-dir", str(data), "--run-dir", str(tmp_path / "run"), "--epochs", "1",
                            "--batch-size", "8", "--weights-out", str(weights), "--sample-dir", str(sample)]) == 0
    out = capsys.readouterr().out
    trained = load_checkpoint(tmp_path / "run" / "last.pth")["model"]
    exported = safetensors.torch.load_file(weights)
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    assert len(list(sample.glob("*/*.png"))) == 10 and len((sample / "class_map.txt").read_text().split()) == 10
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f'sha256 = "{sha}"' in out and "eval_images = 10" in out
