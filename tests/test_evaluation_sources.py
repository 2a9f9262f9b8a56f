"""Validation data layouts: image folder, the devkit's flat folder with its ground truth,
and parquet shards."""
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval_helpers import PlantedModel, odd_items, planted_expectation, solid_image
from nfzoo.evaluation import EvalOptions, EvaluationError, eval_data_config, evaluate
from nfzoo.torchrun import start
from nfzoo.evaluation.labels import imagenet_synsets, read_ground_truth, val_file_name
from nfzoo.evaluation.sources import ParquetSource, flat_val_folder, open_source

SYNSETS = imagenet_synsets()
# the classes of validation images 1..4, as sorted-synset indices
CLASSES = [65, 970, 230, 809]


def test_synset_order_is_sorted():
    assert len(SYNSETS) == 1000 and list(SYNSETS) == sorted(SYNSETS) and SYNSETS[0] == "n01440764"


def _devkit_meta(path):
    """A meta mapping whose ILSVRC2012_IDs are NOT in sorted-synset order (as in the devkit):
    ID i is synset (i * 7) % 1000 of the sorted list."""
    path.write_text("".join(f"{i + 1} {SYNSETS[(i * 7) % 1000]}\n" for i in range(1000)))
    return {SYNSETS[(i * 7) % 1000]: i + 1 for i in range(1000)}


def test_devkit_ground_truth_goes_through_the_meta_mapping(tmp_path):
    id_of = _devkit_meta(tmp_path / "meta.txt")
    (tmp_path / "gt.txt").write_text("".join(f"{id_of[SYNSETS[c]]}\n" for c in CLASSES))
    truth = read_ground_truth(tmp_path / "gt.txt", tmp_path / "meta.txt")
    assert truth == {val_file_name(n + 1): c for n, c in enumerate(CLASSES)}
    with pytest.raises(EvaluationError, match="--gt-meta"):
        read_ground_truth(tmp_path / "gt.txt")


def test_synset_per_line_and_file_label_forms(tmp_path):
    (tmp_path / "synsets.txt").write_text("".join(f"{SYNSETS[c]}\n" for c in CLASSES))
    (tmp_path / "val.txt").write_text("".join(f"{val_file_name(n + 1)} {c}\n" for n, c in enumerate(CLASSES)))
    expected = {val_file_name(n + 1): c for n, c in enumerate(CLASSES)}
    assert read_ground_truth(tmp_path / "synsets.txt") == expected == read_ground_truth(tmp_path / "val.txt")


def test_flat_folder_with_ground_truth(tmp_path):
    items = odd_items(9)
    (tmp_path / "val").mkdir()
    for n, (code, _) in enumerate(items, 1):
        solid_image(code).save(tmp_path / "val" / val_file_name(n), format="PNG")
    (tmp_path / "gt.txt").write_text("".join(f"{SYNSETS[label]}\n" for _, label in items))
    source = open_source(tmp_path / "val", ground_truth=tmp_path / "gt.txt")
    assert source.labels == [label for _, label in items]
    model = PlantedModel()
    result = evaluate(model, source, eval_data_config(model), start("cpu"), EvalOptions(workers=0, progress=False))
    assert (result.top1, result.top5) == planted_expectation(items)
    with pytest.raises(EvaluationError, match="--ground-truth"):
        open_source(tmp_path / "val")


def _png(code):
    buf = io.BytesIO()
    solid_image(code).save(buf, format="PNG")
    return buf.getvalue()


def _write_shard(path, items, first, row_group_size=4):
    table = pa.table({
        "image": [{"bytes": _png(code), "path": val_file_name(first + i)} for i, (code, _) in enumerate(items)],
        "label": [label for _, label in items],
    })
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_shards(tmp_path):
    items = odd_items(11)
    (tmp_path / "data").mkdir()
    _write_shard(tmp_path / "data" / "validation-00000-of-00002.parquet", items[:6], 1)
    _write_shard(tmp_path / "data" / "validation-00001-of-00002.parquet", items[6:], 7)
    source = open_source(tmp_path)
    assert isinstance(source, ParquetSource) and len(source) == 11
    assert source.names == [val_file_name(n) for n in range(1, 12)]
    model = PlantedModel()
    result = evaluate(model, source, eval_data_config(model), start("cpu"), EvalOptions(batch_size=4, workers=2, progress=False))
    assert (result.top1, result.top5) == planted_expectation(items)


def test_parquet_test_split_is_refused(tmp_path):
    _write_shard(tmp_path / "test.parquet", [(0, -1)], 1)
    with pytest.raises(EvaluationError, match="no labels"):
        open_source(tmp_path / "test.parquet")


def test_conflicting_ground_truth_lines_are_refused(tmp_path):
    name = val_file_name(1)
    (tmp_path / "same.txt").write_text(f"{name} 3\n{name} 3\n")
    assert read_ground_truth(tmp_path / "same.txt") == {name: 3}
    (tmp_path / "conflict.txt").write_text(f"{name} 3\n{name} {SYNSETS[4]}\n")
    with pytest.raises(EvaluationError, match="given twice, as 3 and as 4"):
        read_ground_truth(tmp_path / "conflict.txt")
    id_of = _devkit_meta(tmp_path / "meta.txt")
    with open(tmp_path / "meta.txt", "a") as f:
        f.write(f"1 {SYNSETS[999]}\n")  # ID 1 again, another synset
    (tmp_path / "gt.txt").write_text(f"{id_of[SYNSETS[7]]}\n")
    with pytest.raises(EvaluationError, match="given twice"):
        read_ground_truth(tmp_path / "gt.txt", tmp_path / "meta.txt")


def test_class_maps_are_read_as_timm_reads_them(tmp_path):
    from timm.data.readers.class_map import load_class_map

    from nfzoo.evaluation.labels import read_class_map

    path = tmp_path / "map.txt"
    path.write_text("cat\n dog \n\nfox\r\nn01440764\n")  # a blank line holds an index, as in timm
    expected = load_class_map(str(path))
    del expected[""]
    assert read_class_map(path) == expected == {"cat": 0, "dog": 1, "fox": 3, "n01440764": 4}
    path.write_text("cat\ndog\ncat\n")
    with pytest.raises(EvaluationError, match="'cat' is given twice"):
        read_class_map(path)


def test_an_image_folder_names_images_by_their_path_in_it(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        solid_image(0).save(tmp_path / "data" / name / "same.png")
    (tmp_path / "map.txt").write_text("cat\ndog\n")
    source = open_source(tmp_path / "data", class_map=tmp_path / "map.txt")
    assert (source.names, source.labels) == (["cat/same.png", "dog/same.png"], [0, 1])
