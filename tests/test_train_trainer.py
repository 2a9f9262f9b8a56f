"""nfzoo.train: the recipe's pieces, learning, and exact resumption after a kill."""
import copy
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from nfzoo.layers import DropPath, ScaledStdConv2d
from nfzoo.layers.ablation_norms import BatchInstanceNorm2d
from nfzoo.train import CHECKPOINT_NAME, TrainConfig, Trainer, fashion_mnist, load_checkpoint, read_metrics, save_checkpoint
from nfzoo.optim.param_groups import agc_parameters
from nfzoo.train.sgd import build_optimizer
from test_optim_agc import CLIP, reference_clip

REPO = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """Scaled-WS conv (with gains), a BIN layer (with a clipped gate), drop path and dropout (so
    that training draws random numbers), and a classifier."""

    def __init__(self, in_chans=1, num_classes=4):
        super().__init__()
        self.conv = ScaledStdConv2d(in_chans, 8, 3, padding=1)
        self.norm = BatchInstanceNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.drop_path = DropPath(0.2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        x = x + self.drop_path(torch.relu(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def tiny_dataset(n=64, classes=4, size=8, seed=0):
    """Images whose class sets their brightness, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.linspace(-1.5, 1.5, classes)[y].view(n, 1, 1, 1) + 0.3 * torch.randn(n, 1, size, size, generator=g)
    return TensorDataset(x, y)


def make_trainer(tmp, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 0.2, "agc_clip": 0.1, "warmup_epochs": 0.5, "ema_decay": 0.9,
                         "ckpt_every": 3, "log_every": 1, "progress": False, "plot": False, "output_dir": str(tmp),
                         **overrides})
    return Trainer(TinyNet(), tiny_dataset(), cfg, eval_set=tiny_dataset(32, seed=0))


def assert_same_tree(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path} keys differ"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path} length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def comparable(state):
    """A trainer state without what legitimately differs between two run folders."""
    state = dict(state)
    state["config"] = {k: v for k, v in state["config"].items() if k != "output_dir"}
    return state


def test_training_lowers_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6, ema_decay=None)
    before = trainer.evaluate()["eval_loss"]
    after = trainer.fit()
    assert after["eval_loss"] < 0.75 * before, (before, after)
    assert not after["diverged"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "train_loss" in r] == list(range(1, 25))
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_recipe_parameter_groups_and_agc_scope(tmp_path):
    model = TinyNet()
    opt = build_optimizer(model, TrainConfig(weight_decay=2e-5, base_lr=0.1, batch_size=1024))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model.conv.weight), id(model.conv2.weight), id(model.fc.weight)}
    assert id(model.conv.gain) not in decay and id(model.norm.rho) not in decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 1024 / 256)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    clipped = {id(p) for p in agc_parameters(model)}
    assert id(model.fc.weight) not in clipped and id(model.fc.bias) in clipped  # DeepMind clips the bias
    assert id(model.conv.weight) in clipped and id(model.conv.gain) in clipped


def test_agc_clips_unitwise(tmp_path):
    trainer = make_trainer(tmp_path, agc_clip=0.01, ema_decay=None)
    x, y = tiny_dataset()[:16]
    w0 = trainer.model.conv2.weight.detach().clone()
    trainer.optimizer.param_groups[0]["lr"] = trainer.optimizer.param_groups[1]["lr"] = 1.0
    for group in trainer.optimizer.param_groups:
        group["momentum"], group["nesterov"], group["weight_decay"] = 0.0, False, 0.0
    trainer.train_step(x, y)
    delta = (trainer.model.conv2.weight.detach() - w0).flatten(1).norm(dim=1)
    max_delta = 0.01 * w0.flatten(1).norm(dim=1).clamp(min=1e-3)
    assert torch.all(delta <= max_delta * (1 + 1e-4)), (delta, max_delta)


def test_resume_after_exception_continues_identically(tmp_path):
    snapshots = {}

    def snapshot(trainer):
        if trainer.step == 6:
            snapshots["step6"] = copy.deepcopy(comparable(trainer.state_dict()))

    full = make_trainer(tmp_path / "full")
    full.on_step = snapshot
    full_result = full.fit()

    def crash(trainer):
        if trainer.step == 7:  # the last checkpoint is step 6, mid-epoch (4 steps per epoch)
            raise KeyboardInterrupt

    crashed = make_trainer(tmp_path / "killed")
    crashed.on_step = crash
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    torch.manual_seed(123)  # a different RNG and a different fresh model: the checkpoint must restore all
    resumed = make_trainer(tmp_path / "killed", seed=1)
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (6, 1, 2)
    assert_same_tree(comparable(resumed.state_dict()), snapshots["step6"])
    assert resumed.fit() == full_result
    assert_same_tree(comparable(resumed.state_dict()), comparable(full.state_dict()))
    assert read_metrics(tmp_path / "killed" / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_resume_refuses_a_different_batch_layout(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(ValueError, match="batch 16"):
        make_trainer(tmp_path, batch_size=8)


def test_save_checkpoint_keeps_the_old_file_when_writing_fails(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    path = tmp_path / "ckpt.pth"
    save_checkpoint({"step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def write_fake_fashion_mnist(root, n_train=96, n_test=24):
    """IDX files in Fashion-MNIST's format and names, with learnable class patterns."""
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (10, 28, 28))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.clip(patterns[labels] + rng.normal(0, 40, (n, 28, 28)), 0, 255).astype(np.uint8)
        for kind, arr in (("images", images), ("labels", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            with gzip.open(root / f"{prefix}-{kind}-idx{arr.ndim}-ubyte.gz", "wb") as f:
                f.write(header + arr.tobytes())


def test_fashion_mnist_reader_and_missing_data_message(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    ds = fashion_mnist("test", tmp_path)
    x, y = ds.tensors
    assert x.shape == (24, 1, 28, 28) and x.dtype == torch.float32 and y.tolist()[:11] == list(range(10)) + [0]
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", tmp_path / "nowhere")


@pytest.fixture
def one_thread():
    """Bit-exact comparisons with a subprocess need the same torch thread count on both sides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(threads)


def test_cli_resumes_after_sigkill(tmp_path, one_thread):
    """Kill a real training process mid-run; rerunning the command ends where an uninterrupted run does."""
    from nfzoo.train.train_cli import main

    write_fake_fashion_mnist(tmp_path)
    args = ["--model", "test_nfnet", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--epochs", "2",
            "--batch-size", "8", "--lr", "0.05", "--warmup-epochs", "0.5", "--ema-decay", "0.9",
            "--drop-rate", "0.2", "--drop-path-rate", "0.1", "--ckpt-every", "1", "--log-every", "1", "--no-progress",
            "--no-plot"]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nfzoo.train", *args, "--output-dir", str(killed_dir)],
                            env=one_thread, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    log = killed_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(read_metrics(log)) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed_dir / CHECKPOINT_NAME)["step"]
    assert 0 < at_kill < 24

    assert main([*args, "--output-dir", str(killed_dir)]) == 0
    assert main([*args, "--output-dir", str(tmp_path / "full")]) == 0
    assert read_metrics(killed_dir / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")
    a = comparable(load_checkpoint(killed_dir / CHECKPOINT_NAME))
    b = comparable(load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME))
    assert a["step"] == 24
    assert_same_tree(a, b)


def test_micro_batches_accumulate_the_full_batch_gradient(tmp_path):
    """Without batch-dependent layers, micro-batching changes nothing but the rounding."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4))
    x, y = tiny_dataset()[:16]
    grads = []
    for micro in (None, 4):
        cfg = TrainConfig(epochs=1, batch_size=16, micro_batch=micro, lr=0.1, warmup_epochs=0, ema_decay=None,
                          agc_clip=None, progress=False, output_dir=str(tmp_path / str(micro)))
        trainer = Trainer(copy.deepcopy(model), tiny_dataset(), cfg)
        loss = trainer.train_step(x, y)
        grads.append((loss, [p.grad.clone() for p in trainer.model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes_match_one_process_with_the_global_batch(tmp_path, one_thread):
    """DDP on Gloo: 2 ranks sharing the global batch 16 train a normalizer-free net exactly like 1 rank."""
    write_fake_fashion_mnist(tmp_path)
    common = ["--model", "test_nfnet", "--data-dir", str(tmp_path), "--epochs", "1", "--lr", "0.1",
              "--warmup-epochs", "0", "--ema-decay", "none", "--no-progress", "--no-plot", "--eval-every", "0"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "nfzoo.train", *common, "--batch-size", "16", "--output-dir", str(tmp_path / "ddp")],
                         env=one_thread, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from nfzoo.train.train_cli import main
    main([*common, "--batch-size", "16", "--output-dir", str(tmp_path / "single")])
    a = load_checkpoint(tmp_path / "ddp" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "single" / CHECKPOINT_NAME)
    assert a["world_size"] == 2 and a["step"] == b["step"] == 6 and len(a["rng"]) == 2
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_atomic_files_get_an_ordinary_mode(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / "c.pth")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == 0o666 & ~mask


def test_the_trainer_leaves_ablation_gates_alone(tmp_path):
    """A step is the recipe's (forward, backward, AGC, update, schedule, EMA): Batch-Instance
    Norm's gate clip belongs to the study that trains such a layer, not to the trainer."""
    trainer = make_trainer(tmp_path, ema_decay=None)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0
    with torch.no_grad():
        trainer.model.norm.rho.fill_(2.0)
    trainer.train_step(*tiny_dataset()[:16])
    assert torch.equal(trainer.model.norm.rho, torch.full((8,), 2.0))


def test_a_training_step_applies_exactly_the_clipped_gradient(tmp_path):
    """The trainer's update with lr 1 and no momentum or decay is minus the clipped gradient,
    unit by unit, computed here from the same loss and the paper's rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 4))
    with torch.no_grad():
        model[0].weight[:2].zero_()  # two zero units: clipped against the eps floor
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.arange(16) % 4)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                      agc_clip=CLIP, ema_decay=None, warmup_epochs=0, progress=False, output_dir=str(tmp_path))
    reference = copy.deepcopy(model)
    trainer = Trainer(model, data, cfg)
    x, y = data[:16]
    nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)(reference(x), y).backward()
    w0 = reference[0].weight.detach().clone()
    expected = reference_clip(w0, reference[0].weight.grad, CLIP, 1e-3)
    assert not torch.equal(expected, reference[0].weight.grad)  # the clip is active
    trainer.train_step(x, y)
    # atol: a float32 weight of ~0.3 holds its update to about 3e-8
    torch.testing.assert_close(w0 - trainer.model[0].weight.detach(), expected, rtol=1e-5, atol=1e-7)
