"""Image decoding in the harness: any decode failure is counted (one process and two), a FIFO
is never opened, GIFs are read, a preprocessing failure stops the run, 16-bit PNGs keep their
range, class folders named by number map by number."""
import io
import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest
import torch.multiprocessing as mp
from PIL import Image

from eval_helpers import odd_items, planted_expectation, solid_image, write_planted_folder
from nfzoo.evaluation import EvaluationError
from nfzoo.evaluation.sources import image_folder
from nfzoo.torchrun import start
from test_evaluation_sharding import _evaluate, _source, _worker


def _png_that_pil_rejects_with_syntax_error() -> bytes:
    """A valid PNG plus, after its image data, a zTXt chunk with an unknown compression method:
    PIL raises ``SyntaxError`` (not an OSError) when it decodes the image."""
    buf = io.BytesIO()
    solid_image(3).save(buf, format="PNG")
    png = buf.getvalue()
    data = b"k\x00\x05xyz"
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    return png[:-12] + chunk + png[-12:]  # before IEND


def test_the_malformed_png_really_raises_syntax_error():
    with pytest.raises(SyntaxError):
        with Image.open(io.BytesIO(_png_that_pil_rejects_with_syntax_error())) as img:
            img.convert("RGB")


def test_a_malformed_png_is_counted_in_one_process_and_two(tmp_path):
    items = odd_items(13)
    write_planted_folder(tmp_path / "data", items)
    (tmp_path / "data" / "c002" / "syntax.png").write_bytes(_png_that_pil_rejects_with_syntax_error())
    single = _evaluate(_source(tmp_path), start("cpu"))
    assert single.images == 13 and single.bad_images == ["c002/syntax.png"]
    assert (single.top1, single.top5) == planted_expectation(items)
    mp.start_processes(_worker, args=(tmp_path, 2), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        multi = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert multi["images"] == 13 and multi["bad_images"] == ["c002/syntax.png"]


def test_a_16_bit_png_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    folder = tmp_path / "c"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "deep.png")
    (tmp_path / "map.txt").write_text("c\n")
    source = image_folder(tmp_path, tmp_path / "map.txt")
    rgb = np.asarray(source.open(0))
    expected = np.round(ramp / 257).astype(np.uint8)  # 65535 -> 255, linearly
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert (rgb == 255).mean() < 0.01


def _numbered_folders(root, names, with_images):
    for name in names:
        (root / name).mkdir(parents=True)
    for name in with_images:
        solid_image(0).save(root / name / "img.png")


def test_class_folders_named_by_number_map_by_number(tmp_path):
    _numbered_folders(tmp_path, [str(i) for i in range(1000)], ["2", "10", "999"])
    source = image_folder(tmp_path)
    labels = {p.parent.name: label for p, label in zip(source.paths, source.labels)}
    assert labels == {"2": 2, "10": 10, "999": 999}
    assert "mapped by number" in source.description


def test_numbered_folders_that_are_not_0_to_999_are_refused(tmp_path):
    _numbered_folders(tmp_path, [str(i) for i in range(1, 1001)], ["1"])
    with pytest.raises(EvaluationError, match="exactly 0 ... 999"):
        image_folder(tmp_path)


def _planted_evaluate(tmp_path, **options):
    from eval_helpers import PlantedModel
    from nfzoo.evaluation import EvalOptions, eval_data_config, evaluate

    model = PlantedModel()
    options = {"workers": 0, "progress": False, **options}
    return evaluate(model, _source(tmp_path), eval_data_config(model), start("cpu"), EvalOptions(**options))


def test_a_fifo_is_a_bad_image_and_never_opened(tmp_path):
    items = odd_items(5)
    write_planted_folder(tmp_path / "data", items)
    os.mkfifo(tmp_path / "data" / "c002" / "x.jpg")  # opening it would wait for a writer forever
    done = []
    worker = threading.Thread(target=lambda: done.append(_planted_evaluate(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done, "the evaluation hangs on the FIFO"
    assert done[0].bad_images == ["c002/x.jpg"] and done[0].images == 5
    assert (done[0].top1, done[0].top5) == planted_expectation(items)


def test_a_gif_is_read_as_its_first_frame_and_the_source_says_so(tmp_path):
    items = odd_items(5)
    write_planted_folder(tmp_path / "data", items)
    code, label = 4, 4
    frames = [solid_image(code), solid_image(9)]
    frames[0].save(tmp_path / "data" / f"c{label:03d}" / "anim.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "data" / "c000" / "notes.txt").write_text("not an image")
    source = _source(tmp_path)
    assert "1 GIF(s) read as their first frame" in source.description
    assert "1 file(s) left out as not images (extension .txt)" in source.description
    result = _planted_evaluate(tmp_path)
    assert result.images == 6 and result.bad_images == []
    assert (result.top1, result.top5) == planted_expectation(items + [(code, label)])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_preprocessing_failure_stops_the_run_instead_of_counting_bad_images(tmp_path, monkeypatch, workers):
    import nfzoo.evaluation.loop as loop

    write_planted_folder(tmp_path / "data", odd_items(3))
    real = loop.eval_transform

    def failing(data_config, resize="pil"):
        transform = real(data_config, resize)
        return lambda image: transform(image.crop((0, 0, 0, 0)))  # an empty image: torchvision refuses it
    monkeypatch.setattr(loop, "eval_transform", failing)
    with pytest.raises(EvaluationError, match="preprocessing it failed .* not a bad image"):
        _planted_evaluate(tmp_path, workers=workers)


def test_a_transform_that_no_image_fits_is_an_error_not_bad_images(tmp_path):
    from eval_helpers import PlantedModel
    from nfzoo.evaluation import EvalOptions, eval_data_config, evaluate

    write_planted_folder(tmp_path / "data", odd_items(3))
    model = PlantedModel()
    config = dict(eval_data_config(model), crop_pct=-1.0)
    with pytest.raises(EvaluationError, match="crop_pct -1.0"):
        evaluate(model, _source(tmp_path), config, start("cpu"), EvalOptions(workers=0, progress=False))
