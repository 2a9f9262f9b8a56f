"""nfzoo-validate end to end on tiny data, and its answers to bad input."""
import csv
import json
import re

import pytest
import timm
import torch

import nfzoo.evaluation.validate_cli as cli

from eval_helpers import odd_items, write_planted_folder
from nfzoo.evaluation.validate_cli import main
from nfzoo.evaluation.results import FIELDS
from nfzoo.machine import device_name
from nfzoo.weights.manifest import Checkpoint

FAST = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--no-progress"]


@pytest.fixture
def data(tmp_path):
    class_map = write_planted_folder(tmp_path / "data", odd_items(7))
    return tmp_path / "data", class_map


def test_results_json_csv_and_plot(data, tmp_path, capsys):
    root, class_map = data
    args = FAST + ["--data-dir", str(root), "--class-map", str(class_map), "--plot", str(tmp_path / "plot.png")]
    assert main(args + ["--results-file", str(tmp_path / "r.json")]) == 0
    assert main(args + ["--results-file", str(tmp_path / "r.csv"), "--amp", "bf16", "--channels-last"]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert tuple(row) == FIELDS
    assert (row["model"], row["weights"], row["images"], row["img_size"]) == ("test_resnet", "random", 7, 32)
    assert row["device"] == device_name(torch.device("cpu"))  # the CPU named as the benchmarks name it
    assert row["params_m"] > 0 and row["gmacs"] > 0 and row["img_per_sec"] > 0
    (csv_row,) = csv.DictReader((tmp_path / "r.csv").open())
    assert csv_row["model"] == "test_resnet" and int(csv_row["images"]) == 7
    assert (csv_row["precision"], csv_row["channels_last"]) == ("bf16", "True")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "random-init" in capsys.readouterr().out


def test_embedded_dataset_runs_and_says_so(capsys):
    assert main(FAST + ["--demo-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "generated random images, 3 images" in out


def test_unreadable_image_is_counted_and_reported(data, tmp_path, capsys):
    root, class_map = data
    (root / "c000" / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(FAST + ["--data-dir", str(root), "--class-map", str(class_map), "--results-file", str(tmp_path / "r.json")]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert (row["images"], row["bad_images"]) == (7, 1)
    assert "broken.JPEG" in capsys.readouterr().out


def _not_1000(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "few" / name).mkdir(parents=True)
    return ["--data-dir", str(tmp_path / "few")]


def _corrupt_strict(tmp_path):
    class_map = write_planted_folder(tmp_path / "data", odd_items(5))
    (tmp_path / "data" / "c002" / "broken.png").write_bytes(b"garbage")
    return ["--data-dir", str(tmp_path / "data"), "--class-map", str(class_map), "--strict"]


def _data_dir(tmp_path):
    class_map = write_planted_folder(tmp_path / "data", odd_items(3))
    return ["--data-dir", str(tmp_path / "data"), "--class-map", str(class_map)]


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--data-dir", str(tmp_path / "empty")]


BAD_INPUT = {
    "missing folder": (lambda t: ["--data-dir", str(t / "nope")], "does not exist"),
    "empty folder": (_empty, "is empty"),
    "not 1000 classes": (_not_1000, "2 class folders, not the 1000 .* --class-map"),
    "corrupt image, --strict": (_corrupt_strict, r"corrupt image c002/broken.png \(--strict"),
    "check, model not in the zoo": (lambda t: _data_dir(t) + ["--pretrained", "--check"],
                                    "test_resnet has no pretrained weights in the nfzoo manifest"),
    "check, random weights": (lambda t: _data_dir(t) + ["--check"], "add --pretrained or --checkpoint"),
    "check, no published accuracy": (
        lambda t: _data_dir(t) + ["--model", "resnet50_bcn_ws.jhu_in1k", "--pretrained", "--check"],
        "no published top-1/top-5 is known for resnet50_bcn_ws.jhu_in1k"),
    "check, not the full validation set": (
        lambda t: _data_dir(t) + ["--model", "nfnet_f0.dm_in1k", "--pretrained", "--check"],
        "measured on 50000 imagenet-1k validation images"),
    "check without data": (lambda t: ["--pretrained", "--check"], "needs the validation images"),
    "weights not available offline": (lambda t: _data_dir(t) + ["--pretrained"],
                                      "cannot create test_resnet with pretrained weights"),
    "missing checkpoint file": (lambda t: _data_dir(t) + ["--checkpoint", str(t / "none.pth")], "does not exist"),
    "glob matching nothing": (lambda t: _data_dir(t) + ["--model", "nothing_*"], "matches no checkpoint"),
    "results file suffix": (lambda t: ["--results-file", str(t / "r.txt")], "must end in .json or .csv"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gives_a_message_and_no_results(case, tmp_path, capsys, hf_cache):
    make_args, message = BAD_INPUT[case]
    results = tmp_path / "results" / "r.json"
    args = FAST + make_args(tmp_path)
    args += [] if "--results-file" in args else ["--results-file", str(results)]
    assert main(args) != 0
    assert re.search(message, capsys.readouterr().err), case
    assert not results.exists() and not (results.parent.exists() and any(results.parent.iterdir()))


@pytest.mark.parametrize("expected, status, verdict", [(0.0, 0, "pass"), (50.0, 1, "fail")])
def test_check_against_the_manifest(data, tmp_path, monkeypatch, capsys, expected, status, verdict):
    """--check wiring, on a stand-in manifest entry measured on the 7 images of the test set."""
    root, class_map = data
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "weights.pth")
    entry = Checkpoint(name="test_resnet.r160_in1k", source_url="", source_format="", publish_repo="",
                       test_size=160, crop_pct=0.95, crop_mode="center", interpolation="bilinear", license="",
                       paper="", top1=expected, top5=expected, eval_images=7)
    monkeypatch.setattr(cli, "expected_accuracy", lambda name: entry)
    monkeypatch.setattr(cli, "create_model", _fail_unless_loaded(cli.create_model, tmp_path / "weights.pth"))
    args = FAST + ["--data-dir", str(root), "--class-map", str(class_map), "--checkpoint", str(tmp_path / "weights.pth"),
                   "--check", "--results-file", str(tmp_path / "r.json")]
    assert main(args) == status
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert (row["weights"], row["expected_top1"], row["check"]) == ("checkpoint", expected, verdict)
    assert row["delta_top1"] == pytest.approx(row["top1"] - expected, abs=1e-3)
    assert ("MISSED" in capsys.readouterr().out) == (verdict == "fail")


def _fail_unless_loaded(create_model, path):
    """create_model, asserting that the checkpoint file's weights are the ones loaded."""
    def wrapped(*args, **kwargs):
        model = create_model(*args, **kwargs)
        reference = torch.load(path)
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        return model
    return wrapped
