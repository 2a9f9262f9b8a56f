"""The reproduction's machinery on tiny inputs: micro-batch exactness, networks, resume after a
kill, tables (the study itself is ``python -m nfzoo.train.reproduce``, see docs/reproduction.md)."""
import copy
import csv
import json

import pytest
import torch
import torch.nn as nn
from test_train import write_fake_fashion_mnist

from nfzoo.layers import NORMS
from nfzoo.layers.ghost_batch import lerp_sequence, split_micro_batches
from nfzoo.models.nfnet import NFBlock
from nfzoo.train import reproduce
from nfzoo.train.reproduce import experiments
from nfzoo.train.reproduce.experiments import GROUPED, NORMS as STUDY_NORMS, Setup, build_network
from nfzoo.train.reproduce.figures import agc_table, norm_table
from nfzoo.train.reproduce.networks import BATCH_DEPENDENT, MicroBatchNorm, SmallNFResNet, SmallResNet

TINY = dict(depth=8, widths=(4, 8, 8))


def _net(norm: str, micro_batch=None) -> nn.Module:
    torch.manual_seed(0)
    return SmallResNet(norm, **TINY, num_groups=2 if norm in GROUPED else None, micro_batch=micro_batch).double()


def _accumulated(net: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int) -> None:
    """Gradient accumulation as a data-parallel job's GPUs (or nfzoo.train's micro_batch) do it:
    each micro-batch alone through the network, the losses weighted to the batch's mean."""
    for xc, yc in zip(x.split(micro_batch), y.split(micro_batch)):
        (nn.functional.cross_entropy(net(xc), yc) * len(xc) / len(x)).backward()


@pytest.mark.parametrize("norm", sorted(BATCH_DEPENDENT) + ["gn_ws"])
def test_micro_batched_norms_compute_what_gradient_accumulation_does(norm):
    """One pass with the norms seeing micro-batches == one pass per micro-batch, for the outputs'
    gradients and for the running statistics (updated once per micro-batch, in order)."""
    x, y = torch.randn(12, 1, 12, 12, dtype=torch.float64), torch.arange(12) % 10
    reference, micro, whole = _net(norm), _net(norm, micro_batch=3), _net(norm)  # the same initial weights
    for step in range(2):  # the second step starts from the running statistics the first left
        _accumulated(reference, x * (step + 1), y, 3)
        nn.functional.cross_entropy(micro(x * (step + 1)), y).backward()
    for (name, p), q in zip(reference.named_parameters(), micro.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, b), c in zip(reference.named_buffers(), micro.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-9, atol=1e-12, msg=name)
    for step in range(2):
        nn.functional.cross_entropy(whole(x * (step + 1)), y).backward()
    differs = any(not torch.allclose(p.grad, q.grad) for p, q in zip(whole.parameters(), micro.parameters()))
    assert differs == (norm in BATCH_DEPENDENT)  # a per-image norm cannot tell the split apart


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_batch_dependent_set_is_what_the_norms_do(norm):
    """BATCH_DEPENDENT, which decides which norms the study runs at every micro-batch, holds
    exactly the norms whose training output for one image changes with the rest of the batch."""
    torch.manual_seed(0)
    choice = NORMS[norm]
    layer = choice.layer_factory(2 if choice.num_groups else None)(4).double().train()
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 10 + 5  # Batch Renorm clips: unclipped, it normalizes with running statistics
    fresh = copy.deepcopy(layer)
    alone, together = layer(x[:2])[0], fresh(x)[0]
    assert (not torch.allclose(alone, together)) == (norm in BATCH_DEPENDENT)


def test_micro_batch_helpers():
    start, values = torch.randn(5), torch.randn(4, 5)
    state, expected = start.clone(), [start.clone()]
    for v in values:
        expected.append(state.lerp_(v, 0.1).clone())
    torch.testing.assert_close(lerp_sequence(start, values, 0.1), torch.stack(expected))
    for rows in (values, values[:1]):  # a buffer's weight, closed form and plain lerp
        torch.testing.assert_close(lerp_sequence(start, rows, torch.tensor([0.1])), torch.stack(expected[:len(rows) + 1]))
    assert split_micro_batches(torch.zeros(6, 2, 1, 1), 2).shape == (3, 2, 2, 1, 1)
    assert split_micro_batches(torch.zeros(6, 2, 1, 1), None).shape == (1, 6, 2, 1, 1)
    with pytest.raises(ValueError, match="multiple of micro_batch=4"):
        split_micro_batches(torch.zeros(6, 2, 1, 1), 4)
    with pytest.raises(ValueError, match="positive"):
        MicroBatchNorm(nn.BatchNorm2d(2), 0)


def test_nf_twin_is_the_resnet_without_normalization():
    nf, bn = SmallNFResNet(**TINY, stem_stride=2, stem_pool=True), SmallResNet("bn", **TINY, stem_stride=2, stem_pool=True)
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) for m in nf.modules())
    assert sum(isinstance(m, NFBlock) for m in nf.modules()) == 3
    x = torch.randn(2, 1, 28, 28)
    # same stem, strides and widths: the same feature-map sizes at every stage
    assert nf.blocks(nf.stem(x)).shape == bn.layers(bn.pool(bn.conv1(x))).shape == (2, 8, 2, 2)
    assert nf(x).shape == bn(x).shape == (2, 10)


@pytest.mark.parametrize("norm", STUDY_NORMS)
def test_every_study_network_trains(norm):
    net = build_network(Setup(widths=(4, 8, 8)), norm, micro_batch=2)
    out = net(torch.randn(4, 1, 28, 28))
    out.logsumexp(1).sum().backward()
    assert out.shape == (4, 10) and all(p.grad is not None for p in net.parameters())


def test_tables_aggregate_seeds_and_mark_batch_independent_norms():
    rows = [{"norm": "bn", "micro_batch": str(b), "seed": str(s), "test_error": str(e), "diverged": "False"}
            for b, s, e in ((32, 0, 10.0), (32, 1, 12.0), (2, 0, 30.0), (2, 1, 34.0))]
    rows += [{"norm": "gn", "micro_batch": "all", "seed": str(s), "test_error": str(e), "diverged": "False"}
             for s, e in ((0, 20.0), (1, 22.0))]
    table = norm_table(rows, ("bn", "gn"), (32, 2))
    assert "| norm | 32 / GPU | 2 / GPU | 2 minus 32 |" in table
    assert "| bn | 11.00 ± 1.41 | 32.00 ± 2.83 | +21.00 |" in table
    assert "| gn | *21.00 ± 1.41* | *21.00 ± 1.41* | 0 (exact) |" in table
    agc = [{"model": "nf", "batch": "256", "base_lr": "1.6", "clip": c, "seed": str(s), "diverged": str(d),
            "final_train_loss": "nan" if d else "1.0", "test_error": "nan" if d else str(e)}
           for c, s, d, e in (("none", 0, True, 0), ("none", 1, False, 40.0), ("0.01", 0, False, 20.0),
                              ("0.01", 1, False, 24.0), ("0.04", 0, False, 30.0), ("0.04", 1, False, 30.0))]
    text = agc_table(agc)
    assert "| 256 | 1.6 | nf | none | 1/2 | 40.00 ± 0.00 | nan, 1.0 |" in text
    assert "| 256 | 1.6 | nf | 0.01 | 0/2 | 22.00 ± 2.83 | 1.0, 1.0 |" in text
    assert "| 256 | 1.6 | 0.01 (22.00 %) |" in text
    assert text.index("| nf | none |") < text.index("| nf | 0.01 |") < text.index("| nf | 0.04 |")
    stuck = [{**r, "test_error": "90.0"} for r in agc if r["diverged"] == "False"]
    assert "| 256 | 1.6 | no run learned |" in agc_table(stuck)


class _Killed(Exception):
    pass


def test_study_resumes_after_a_kill(tmp_path, monkeypatch):
    """A study killed in the middle of a run, rerun with the same command, ends with the results of an
    uninterrupted one: finished runs are skipped, the killed run resumes from its checkpoint."""
    write_fake_fashion_mnist(tmp_path, n_train=64, n_test=20)
    sizes = Setup(batch=16, micro_batches=(8, 4), widths=(4, 8, 8), agc_batches=(32,), agc_base_lrs=(0.4,),
                  agc_clips=(None,))
    args = ["--data-dir", str(tmp_path), "--epochs", "2", "--train-images", "64", "--test-images", "20", "--seeds", "0",
            "--norms", "bn", "gn", "--jobs", "1"]
    torch.set_num_threads(1)

    def run(name: str) -> list[dict]:
        reproduce.main(args + ["--out", str(tmp_path / name), "--work", str(tmp_path / f"{name}-work")], sizes)
        return list(csv.DictReader((tmp_path / name / "norms.csv").open()))

    uninterrupted = run("whole")
    calls, train_step = {"n": 0}, experiments.Trainer.train_step

    def dies_in_the_fourth_run(self, x, y):  # runs: bn 8, bn 4, gn, then bn at agc batch 32
        calls["n"] += 1
        if calls["n"] == 3 * 8 + 3:  # 8 steps per run of the norm table; run 4 (4 steps) in its epoch 2
            raise _Killed
        return train_step(self, x, y)

    monkeypatch.setattr(experiments.Trainer, "train_step", dies_in_the_fourth_run)
    with pytest.raises(_Killed):
        run("killed")
    assert len(list(csv.DictReader((tmp_path / "killed" / "norms.csv").open()))) == 3
    assert (tmp_path / "killed-work" / "agc-bn-32-0.4-None-0" / "last.pth").is_file()  # epoch 1 of run 4
    steps = {"n": 0}

    def counted(self, x, y):
        steps["n"] += 1
        return train_step(self, x, y)

    monkeypatch.setattr(experiments.Trainer, "train_step", counted)
    resumed = run("killed")
    assert steps["n"] == 2 + 4  # run 4's epoch 2 (its epoch 1 is in the checkpoint), then run 5
    key = lambda r: (r["norm"], r["micro_batch"])  # noqa: E731
    assert [(key(r), r["test_error"]) for r in sorted(resumed, key=key)] == \
        [(key(r), r["test_error"]) for r in sorted(uninterrupted, key=key)]
    whole_agc, resumed_agc = (list(csv.DictReader((tmp_path / n / "agc.csv").open())) for n in ("whole", "killed"))
    assert [r["losses"] for r in resumed_agc] == [r["losses"] for r in whole_agc]
    meta = json.loads((tmp_path / "killed" / "meta.json").read_text())
    assert meta["seeds"] == [0] and meta["runs"] == 5 and meta["device"]
    assert (tmp_path / "killed" / "norms.md").is_file() and (tmp_path / "killed" / "agc.png").is_file()
