"""`make demo`: the shipped checkpoint loads through the normal pretrained path and, on the shipped
Fashion-MNIST sample, matches the accuracy its manifest entry records; its card is current."""
import json
import re
import shlex
from pathlib import Path

import timm

from nfzoo.evaluation.validate_cli import main as validate
from nfzoo.weights import checkpoint
from nfzoo.weights.files import sha256_file
from nfzoo.weights.publish import write_repo

ROOT = Path(__file__).parents[1]
NAME = "nfnet_mini.nfzoo_fmnist"


def demo_command(plot: Path) -> list[str]:
    """The arguments the Makefile's `demo` recipe gives nfzoo-validate, with the plot under ``plot``."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) := (.*)$", text, re.M))
    recipe = re.search(r"^demo: setup\n\t(.*)$", text, re.M).group(1)
    args = shlex.split(re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe))
    assert args[0].endswith("bin/nfzoo-validate")
    args = args[1:]
    args[args.index("--plot") + 1] = str(plot)
    return args


def test_shipped_checkpoint_loads_through_the_pretrained_path():
    entry = checkpoint(NAME)
    assert entry.file_path.is_file() and sha256_file(entry.file_path) == entry.sha256
    assert entry.file_path.stat().st_size < 4e6
    model = timm.create_model(NAME, pretrained=True)
    assert model.pretrained_cfg["file"] == str(entry.file_path)


def test_make_demo_reports_a_top1_matching_the_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    results = tmp_path / "results.json"
    assert validate(demo_command(tmp_path / "plot.png") + ["--no-progress", "--results-file", str(results)]) == 0
    (row,) = json.loads(results.read_text())
    entry = checkpoint(NAME)
    assert row["weights"] == "pretrained" and row["images"] == entry.eval_images
    assert row["check"] == "pass" and abs(row["top1"] - entry.top1) <= entry.tolerance
    assert row["top1"] > 80  # a trained model, not chance (10 %)
    out = capsys.readouterr().out
    assert f"plot: {tmp_path / 'plot.png'}" in out and (tmp_path / "plot.png").is_file()


def test_committed_model_card_is_the_one_the_manifest_gives(tmp_path):
    entry = checkpoint(NAME)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(entry.file_path.read_bytes())
    card = (write_repo(tmp_path / "weights", NAME, tmp_path / "hub") / "README.md").read_text()
    assert "trained by nfzoo's own recipe" in card and f"| {entry.top1:.2f} |" in card
    assert card == (entry.file_path.parent / "README.md").read_text()


def test_timm_reads_the_shipped_sample_through_its_class_map():
    """timm's validate.py --class-map: its create_dataset and class-map reader find every image of
    the sample, with the labels nfzoo's harness gives them."""
    from timm.data import create_dataset

    from nfzoo.evaluation.sources import open_source

    sample = ROOT / "examples" / "fashion_mnist_sample"
    dataset = create_dataset("", root=str(sample), class_map=str(sample / "class_map.txt"))
    timm_labels = {str(Path(path).relative_to(sample)): label for path, label in dataset.reader.samples}
    ours = open_source(sample, class_map=sample / "class_map.txt")
    assert len(dataset) == len(ours) == checkpoint(NAME).eval_images == 500
    assert timm_labels == dict(zip(ours.names, ours.labels))
    assert sorted(set(timm_labels.values())) == list(range(10))
