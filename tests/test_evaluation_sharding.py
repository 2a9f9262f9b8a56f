"""Two gloo processes count every image exactly once: the same numbers as one process."""
import json
from dataclasses import asdict

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from eval_helpers import PlantedModel, odd_items, planted_expectation, write_planted_folder
from nfzoo.evaluation import EvalOptions, eval_data_config, evaluate
from nfzoo.evaluation.sharding import shard
from nfzoo.torchrun import Runtime, start, stop
from nfzoo.evaluation.sources import open_source

OPTIONS = EvalOptions(batch_size=3, workers=0, progress=False)


def _source(root):
    return open_source(root / "data", class_map=root / "data_class_map.txt")


def _evaluate(source, runtime):
    model = PlantedModel()
    return evaluate(model, source, eval_data_config(model), runtime, OPTIONS)


def _worker(rank, root, world_size):
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = _evaluate(_source(root), start("cpu"))
        (root / f"rank{rank}.json").write_text(json.dumps(asdict(result)))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_one_process_numbers(tmp_path):
    items = odd_items(13)
    write_planted_folder(tmp_path / "data", items)
    # two unreadable files: the total (15) stays odd, and the bad-image lists are gathered too
    (tmp_path / "data" / "c000" / "broken.png").write_bytes(b"not an image")
    good = (tmp_path / "data" / "c000" / "img_0000.png").read_bytes()
    (tmp_path / "data" / "c002" / "truncated.png").write_bytes(good[:60])
    source = _source(tmp_path)
    assert len(source) == 15

    single = _evaluate(source, start("cpu"))
    # fork: the children need not import torch and timm again (spawn costs seconds each)
    mp.start_processes(_worker, args=(tmp_path, 2), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        multi = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert multi["images"] == single.images == 13
        assert (multi["top1"], multi["top5"]) == (single.top1, single.top5) == planted_expectation(items)
        assert sorted(multi["bad_images"]) == sorted(single.bad_images) == ["c000/broken.png", "c002/truncated.png"]


@pytest.mark.parametrize("size", [0, 1, 7, 15, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_the_dataset(size, world):
    shards = [list(shard(size, Runtime(rank, world, None))) for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_start_without_torchrun_is_a_single_process():
    runtime = start("cpu")
    assert (runtime.rank, runtime.world_size, runtime.device.type, runtime.owns_process_group) == (0, 1, "cpu", False)
    stop(runtime)
