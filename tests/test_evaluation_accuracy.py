"""Top-1/top-5 as the harness counts them, against independent computations."""
import json
import re

import numpy as np
import pytest
import timm
import torch

from eval_helpers import PlantedModel, odd_items, planted_expectation, random_image, solid_image, write_planted_folder
from nfzoo.evaluation import EvalOptions, eval_data_config, evaluate
from nfzoo.torchrun import start
from nfzoo.evaluation.labels import RealLabels, val_file_name
from nfzoo.evaluation.accuracy import topk_correct
from nfzoo.evaluation.results import check_row
from nfzoo.evaluation.sources import flat_val_folder, open_source

OPTIONS = EvalOptions(batch_size=4, workers=0, progress=False)


def _numpy_topk(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    order = np.argsort(-logits, axis=1)[:, :k]
    return int((order == labels[:, None]).any(axis=1).sum())


@pytest.mark.parametrize("classes", [1000, 3])
def test_topk_correct_matches_numpy(classes):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, classes, generator=g), torch.randint(0, classes, (64,), generator=g)
    ours = topk_correct(logits, labels).tolist()
    assert ours == [_numpy_topk(logits.numpy(), labels.numpy(), k) for k in (1, 5)]


def test_evaluate_matches_numpy_on_the_same_logits(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(10):
        (tmp_path / "data" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        random_image(rng, (40, 30)).save(tmp_path / "data" / f"c{i % 4}" / f"{i}.JPEG")
    (tmp_path / "map.txt").write_text("c0\nc1\nc2\nc3\n")
    source = open_source(tmp_path / "data", class_map=tmp_path / "map.txt")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet").eval()
    outputs = []
    model.register_forward_hook(lambda m, i, o: outputs.append(o.clone()))
    # make the model favour low classes so that some predictions hit
    with torch.no_grad():
        model.get_classifier().bias[:8] += 3.0
    result = evaluate(model, source, eval_data_config(model, img_size=32), start("cpu"), OPTIONS)
    logits, labels = torch.cat(outputs).numpy(), np.array(source.labels)
    assert result.images == 10
    assert result.top1 == 100 * _numpy_topk(logits, labels, 1) / 10
    assert result.top5 == 100 * _numpy_topk(logits, labels, 5) / 10
    assert 0 < result.top5  # the comparison is not between zeros


def test_planted_model_scores_exactly_as_planned(tmp_path):
    items = odd_items(13)
    class_map = write_planted_folder(tmp_path / "data", items)
    model = PlantedModel()
    result = evaluate(model, open_source(tmp_path / "data", class_map=class_map), eval_data_config(model),
                      start("cpu"), OPTIONS)
    assert (result.top1, result.top5) == planted_expectation(items)
    assert result.images == 13 and result.bad_images == [] and result.images_per_sec > 0


def test_real_labels_accuracy(tmp_path):
    # image n has code n-1; ReaL says: 1 -> {0} (hit), 2 -> {} (left out), 3 -> {9} (miss), 4 -> {5} (top-5 hit)
    real = [[0], [], [9], [5]]
    (tmp_path / "real.json").write_text(json.dumps(real))
    data = tmp_path / "val"
    data.mkdir()
    for n in range(1, 5):
        solid_image(n - 1).save(data / val_file_name(n), format="PNG")
    (tmp_path / "gt.txt").write_text("".join(f"{val_file_name(n)} {n - 1}\n" for n in range(1, 5)))
    model = PlantedModel()
    result = evaluate(model, flat_val_folder(data, tmp_path / "gt.txt"), eval_data_config(model),
                      start("cpu"), OPTIONS, RealLabels(tmp_path / "real.json"))
    assert (result.top1, result.top5) == (100.0, 100.0)
    assert result.real_top1 == pytest.approx(100 / 3) and result.real_top5 == pytest.approx(200 / 3)


def test_timm_bundled_real_labels_load():
    labels = RealLabels().labels
    assert len(labels) == 50_000 and all(0 <= c < 1000 for c in labels[val_file_name(1)])


@pytest.mark.parametrize("delta1, delta5, ok", [(0.3, -0.3, True), (0.31, 0.0, False), (0.0, -0.5, False)])
def test_check_tolerance(delta1, delta5, ok):
    assert check_row({"delta_top1": delta1, "delta_top5": delta5}, tolerance=0.3) is ok


def test_the_progress_bar_shows_the_images_per_second_of_the_result(tmp_path, capsys):
    """One definition of images/s: the bar's last figure is the result's (and the table's)."""
    class_map = write_planted_folder(tmp_path / "data", odd_items(13))
    model = PlantedModel()
    capsys.readouterr()
    result = evaluate(model, open_source(tmp_path / "data", class_map=class_map), eval_data_config(model),
                      start("cpu"), EvalOptions(batch_size=4, workers=0, progress=True))
    shown = re.findall(r"img/s=([0-9.]+)", capsys.readouterr().err)
    assert shown and shown[-1] == f"{result.images_per_sec:.1f}"
