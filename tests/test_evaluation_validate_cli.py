"""nfzoo-validate end to end on tiny data, and its answers to bad input."""
import csv
import errno
import json
import os
import re

import pytest
import timm
import torch

import nfzoo.evaluation.validate_cli as cli

from cli_helpers import assert_one_line_error
from eval_helpers import odd_items, solid_image, write_planted_folder
from nfzoo.evaluation.validate_cli import main
from nfzoo.evaluation.results import FIELDS
from nfzoo.machine import device_name
from nfzoo.train.run_state import save_checkpoint
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


# ----------------------------------------------------------------------------- bad arguments
# Every flag that takes a value, with values it must refuse: one line on stderr, non-zero exit,
# no traceback, and never a default silently put in place of a zero.
BAD_ARGUMENTS = [
    (["--model", "nothing_*"], "matches no checkpoint"),
    (["--checkpoint", "{tmp}/none.pth"], "--checkpoint"),
    (["--num-classes", "0"], "--num-classes"),
    (["--in-chans", "-1"], "--in-chans"),
    (["--data-dir", "{tmp}/nope"], "does not exist"),
    (["--ground-truth", "{tmp}/none.txt"], "--ground-truth"),
    (["--gt-meta", "{tmp}/none.txt"], "--gt-meta"),
    (["--class-map", "{tmp}/none.txt"], "--class-map"),
    (["--real-labels", "{tmp}/none.json"], "--real-labels"),
    (["--demo-images", "0"], "--demo-images"),
    (["--img-size", "0"], "--img-size"),
    (["--img-size", "x"], "--img-size"),
    (["--crop-pct", "0"], "--crop-pct"),
    (["--crop-pct", "-1"], "--crop-pct"),
    (["--crop-pct", "1.5"], "--crop-pct"),
    (["--crop-pct", "nan"], "--crop-pct"),
    (["--resize", "lanczos"], "--resize"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--workers", "-1"], "--workers"),
    (["--device", "tpu"], "--device"),
    (["--amp", "fp8"], "--amp"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--results-file", "{tmp}/r.txt"], ".json or .csv"),
    (["--results-file", "{tmp}/folder.json"], "is a folder"),
    (["--plot", "{tmp}/p.jpg"], ".png"),
    (["--tolerance", "-1"], "--tolerance"),
]
if not torch.cuda.is_available():
    BAD_ARGUMENTS.append((["--device", "cuda"], "no GPU"))


@pytest.mark.parametrize("argv, fragment", BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_argument_is_one_line_and_a_non_zero_exit(argv, fragment, tmp_path, capsys):
    (tmp_path / "folder.json").mkdir()
    assert_one_line_error(main, FAST + [a.format(tmp=tmp_path) for a in argv], capsys, fragment)


def test_every_flag_that_takes_a_value_is_in_the_table():
    from nfzoo.evaluation.validate_cli import parse_args

    parser_flags = set()
    real_parse = cli.ArgumentParser.parse_args

    def record(self, *args, **kwargs):
        parser_flags.update(a.option_strings[-1] for a in self._actions if a.option_strings and a.nargs != 0)
        return real_parse(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(cli.ArgumentParser, "parse_args", record)
        parse_args([])
    assert parser_flags == {argv[0] for argv, _ in BAD_ARGUMENTS}


PLOT_BAD_ARGUMENTS = [
    (["{tmp}/none.json", "-o", "{tmp}/p.png"], "none.json"),
    (["{tmp}/r.json", "-o", "{tmp}/p.jpg"], ".png"),
    (["{tmp}/garbage.json", "-o", "{tmp}/p.png"], "garbage.json"),
]


@pytest.mark.parametrize("argv, fragment", PLOT_BAD_ARGUMENTS)
def test_the_plot_command_refuses_bad_arguments_in_one_line(argv, fragment, tmp_path, capsys):
    from nfzoo.evaluation.plot import main as plot_main

    (tmp_path / "r.json").write_text("[]")
    (tmp_path / "garbage.json").write_text("{not json")
    assert_one_line_error(plot_main, [a.format(tmp=tmp_path) for a in argv], capsys, fragment)
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- writing results
def _fail_on(target_name, error):
    """An os.fsync that raises ``error`` (given the file's path) for the temporary file of a write
    to ``target_name``, as a full disk or a refused write would while the file is written."""
    real_fsync = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(path).startswith(f".{target_name}."):
            raise error(path)
        return real_fsync(fd)
    return fsync


@pytest.mark.parametrize("failing, error", [
    ("p.png", lambda src: OSError(errno.ENOSPC, "No space left on device", src)),
    ("r.json", lambda src: PermissionError(errno.EACCES, "Permission denied", src)),
])
def test_a_failed_write_names_the_file_leaves_nothing_and_prints_the_rows(data, tmp_path, capsys, monkeypatch,
                                                                          failing, error):
    root, class_map = data
    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", _fail_on(failing, error))
    line = assert_one_line_error(main, FAST + ["--data-dir", str(root), "--class-map", str(class_map),
                                               "--results-file", str(out / "r.json"), "--plot", str(out / "p.png")],
                                 capsys)
    assert str(out / failing) in line
    assert sorted(p.name for p in out.iterdir()) == []  # neither file, no temporaries
    monkeypatch.undo()


def test_the_rows_are_printed_when_the_results_cannot_be_written(data, tmp_path, capsys, monkeypatch):
    root, class_map = data
    monkeypatch.setattr(os, "fsync", _fail_on("r.json", lambda src: OSError(errno.ENOSPC, "No space left", src)))
    assert main(FAST + ["--data-dir", str(root), "--class-map", str(class_map),
                        "--results-file", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    (row,) = json.loads(out[out.index("["):])
    assert (row["model"], row["images"]) == ("test_resnet", 7)


# ----------------------------------------------------------------------------- checkpoints
LABELS = ["cat", "dog", "fox"]


def _training_checkpoint(path, model_config=None, **model_kwargs):
    """A checkpoint as nfzoo.train writes it (``model`` and ``model_config``), of a test_resnet."""
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", **model_kwargs)
    contents = {"model": model.state_dict(), "step": 1}
    if model_config is not None:
        contents["model_config"] = model_config
    save_checkpoint(contents, path)
    return model.state_dict()


def _labelled_folder(root, names, code_of=lambda i: i):
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        solid_image(code_of(i)).convert("L").save(root / name / "a.png")
    return root


MODEL_CONFIG = dict(architecture="test_resnet", num_classes=3, in_chans=1, label_names=LABELS,
                    input_size=[1, 24, 24], mean=[0.5], std=[0.25], interpolation="bicubic", crop_pct=0.8,
                    crop_mode="squash")


def test_a_training_checkpoint_gives_model_classes_and_preprocessing(tmp_path, capsys, monkeypatch):
    weights = _training_checkpoint(tmp_path / "last.pth", MODEL_CONFIG, num_classes=3, in_chans=1)
    data = _labelled_folder(tmp_path / "data", LABELS)
    monkeypatch.setattr(cli, "create_model", _fail_unless_matching(cli.create_model, weights))
    args = ["--checkpoint", str(tmp_path / "last.pth"), "--data-dir", str(data), "--workers", "0", "--no-progress",
            "--results-file", str(tmp_path / "r.json")]
    assert main(args) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert (row["model"], row["weights"], row["images"]) == ("test_resnet", "checkpoint", 3)
    assert (row["img_size"], row["crop_pct"], row["crop_mode"], row["interpolation"]) == (24, 0.8, "squash", "bicubic")
    assert "3 classes: cat, dog, fox" in capsys.readouterr().out


def test_a_training_checkpoint_refuses_another_architecture(tmp_path, capsys):
    _training_checkpoint(tmp_path / "last.pth", MODEL_CONFIG, num_classes=3, in_chans=1)
    assert_one_line_error(main, ["--checkpoint", str(tmp_path / "last.pth"), "--model", "resnet18", "--demo-images", "1"],
                          capsys, "holds a test_resnet")


def test_a_plain_state_dict_of_another_class_count_is_named_and_loads_with_num_classes(data, tmp_path, capsys,
                                                                                        monkeypatch):
    root, class_map = data
    path = tmp_path / "sd.pth"
    torch.manual_seed(7)  # not the harness's seed: a fresh head would differ from the file's
    weights = timm.create_model("test_resnet", num_classes=20).state_dict()
    torch.save(weights, path)
    args = FAST + ["--data-dir", str(root), "--class-map", str(class_map), "--checkpoint", str(path)]
    line = assert_one_line_error(main, args, capsys)
    assert "fc.weight" in line and "(20, " in line and "(1000, " in line and "--num-classes" in line
    monkeypatch.setattr(cli, "create_model", _fail_unless_matching(cli.create_model, weights))
    assert main(args + ["--num-classes", "20"]) == 0  # the file's classifier, not a fresh one


def test_labels_beyond_the_model_classes_are_refused(data, tmp_path, capsys):
    root, class_map = data  # labels up to 17
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), tmp_path / "sd.pth")
    assert_one_line_error(main, FAST + ["--data-dir", str(root), "--class-map", str(class_map), "--checkpoint",
                                        str(tmp_path / "sd.pth"), "--num-classes", "5"], capsys, "has 5 classes")


def _fail_unless_matching(create_model, reference):
    """create_model, asserting that the model holds the weights ``reference``."""
    def wrapped(*args, **kwargs):
        model = create_model(*args, **kwargs)
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        return model
    return wrapped


# ----------------------------------------------------------------------------- the plot
def test_the_plot_names_the_data_and_marks_the_recorded_accuracy():
    from nfzoo.evaluation.plot import accuracy_figure

    row = dict(model="nfnet_mini", tag="nfzoo_fmnist", top1=90.0, expected_top1=91.0, img_per_sec=500.0,
               images=500, data="image folder examples/fashion_mnist_sample; 1 GIF(s) read as their first frame",
               device="cpu", precision="fp32")
    ax = accuracy_figure([row]).axes[0]
    assert "fashion_mnist_sample (500 images)" in ax.get_ylabel() and "ImageNet" not in ax.get_ylabel()
    points = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
    assert points == [(500.0, 90.0), (500.0, 91.0)]
