"""Image decoding in the harness: any decode failure is counted (one process and two), 16-bit
PNGs keep their range, class folders named by number map by number."""
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch.multiprocessing as mp
from PIL import Image

from eval_helpers import odd_items, planted_expectation, solid_image, write_planted_folder
from nfzoo.evaluation.input_error import EvaluationError
from nfzoo.evaluation.sources import image_folder
from nfzoo.torchrun import start
from test_eval_distributed import _evaluate, _source, _worker


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
