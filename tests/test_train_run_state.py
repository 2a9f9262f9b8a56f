"""Training checkpoints: they load without running code, the harness reads them, and a resumed
run's metrics log holds each record once."""
import os

import pytest
import torch
from torch.utils.data import TensorDataset

from nfzoo.train import CHECKPOINT_NAME, Trainer, TrainConfig, load_checkpoint, read_metrics, save_checkpoint
from nfzoo.errors import CheckpointError
from test_train_trainer import make_trainer


class _Planted:
    """What an attacker would put in ``last.pth``: unpickling it runs ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": "nfzoo.train/2", "payload": _Planted(marker)}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="could run code"):
        make_trainer(tmp_path)  # resume='auto' finds the planted last.pth
    assert not marker.exists()


def test_a_damaged_checkpoint_is_refused_with_a_message(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


def test_a_checkpoint_loads_with_weights_only(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # raises on any non-plain object
    assert state["format"] == "nfzoo.train/2" and state["step"] == 4


def test_nfzoo_validate_reads_a_training_checkpoint(tmp_path):
    """``nfzoo-validate --checkpoint runs/x/last.pth``: timm loads the ``model`` entry."""
    import timm

    import nfzoo  # noqa: F401
    from nfzoo.evaluation.model_setup import create_model

    torch.manual_seed(0)
    model = timm.create_model("resnet50_gn_ws")
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, warmup_epochs=0, progress=False, eval_every=0,
                      output_dir=str(tmp_path / "x"))
    trainer = Trainer(model, data, cfg)
    trainer.train_step(*data[:4])
    trainer.save()
    loaded = create_model("resnet50_gn_ws", "checkpoint", tmp_path / "x" / CHECKPOINT_NAME)
    trained = trainer.model.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_a_kill_between_evaluation_and_checkpoint_logs_the_evaluation_once(tmp_path):
    # ckpt_every=2: the last step of epoch 1 is checkpointed before the evaluation is logged
    full = make_trainer(tmp_path / "full", ckpt_every=2)
    full.fit()

    crashed = make_trainer(tmp_path / "killed", ckpt_every=2)
    real_save = crashed.save

    def save_then_die_after_first_eval():
        if crashed.epoch == 1 and crashed.batch_in_epoch == 0:  # the epoch-end save, after the eval record
            raise KeyboardInterrupt
        real_save()

    crashed.save = save_then_die_after_first_eval
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    make_trainer(tmp_path / "killed", seed=1, ckpt_every=2).fit()
    killed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert sum("eval_top1" in r for r in killed) == 2
    assert killed == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_a_fresh_run_drops_the_log_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.0}\n')
    trainer = make_trainer(tmp_path, epochs=1)
    assert read_metrics(tmp_path / "metrics.jsonl") == []
    trainer.fit()
    assert all(r["train_loss"] != 9.0 for r in read_metrics(tmp_path / "metrics.jsonl") if "train_loss" in r)
