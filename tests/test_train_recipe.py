"""The NFNet recipe against DeepMind's formulas, each computed here from the release's files:
EMA decay (nfnets/utils.py tf1_ema), learning-rate schedule (nfnets/optim.py
WarmupCosineDecay) and the defaults of nfnets/experiment_nfnets.py."""
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from nfzoo.train import TrainConfig, Trainer
from nfzoo.train.ema import TF1WarmupEma


def deepmind_ema_decay(global_step: int, decay: float = 0.99999) -> float:
    """tf1_ema: min(decay, (1 + step) / (10 + step)), at DeepMind's 0-based global step."""
    return min(decay, (1.0 + global_step) / (10.0 + global_step))


def deepmind_lr(itr: float, max_val: float, num_steps: float, warmup_steps: float, min_val: float = 0.0) -> float:
    """WarmupCosineDecay with start_val 0: linear while itr <= warmup, then the cosine over the
    steps after the warmup."""
    if itr <= warmup_steps:
        return max_val * itr / warmup_steps
    cos_itr = (itr - warmup_steps) / (num_steps - warmup_steps)
    return 0.5 * (max_val - min_val) * (1 + math.cos(math.pi * cos_itr)) + min_val


def test_ema_decay_sequence_is_tf1_style():
    ema = TF1WarmupEma(nn.Linear(1, 1), decay=0.99999)
    for n in (1, 2, 10, 1000, 112_603, 899_990, 899_991, 900_000, 5_000_000):  # step n = global step n - 1
        assert ema.get_decay(n) == pytest.approx(deepmind_ema_decay(n - 1), rel=1e-15)
    assert ema.get_decay(1) == pytest.approx(0.1)  # the first update keeps 10 % of the initial weights
    assert ema.get_decay(5_000_000) == 0.99999  # the cap binds only after ~900k steps


def test_trainer_ema_follows_deepminds_recursion(tmp_path):
    """The trainer's EMA after a few steps equals the recursion over the weights it produced."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 3), torch.randint(0, 2, (48,)))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.5, warmup_epochs=0, agc_clip=None, ckpt_every=0, eval_every=0,
                      progress=False, output_dir=str(tmp_path), resume=None)
    model = nn.Linear(3, 2)
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    seen = []

    def record(trainer):
        t = trainer.step - 1  # DeepMind's global step of this update
        d = deepmind_ema_decay(t, cfg.ema_decay)
        for k, v in trainer.model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.double()
        seen.append(t)

    trainer = Trainer(model, data, cfg, on_step=record)
    trainer.fit()
    assert seen == list(range(6))
    for k, v in trainer.ema.module.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=0, atol=1e-6)


class _ImageNetSized(torch.utils.data.Dataset):
    def __len__(self):
        return 1281167


def test_schedule_is_deepminds_warmup_cosine(tmp_path):
    """DeepMind's numbers (experiment_nfnets.py): global batch 4096, lr 0.1 x 4096/256, 360 epochs
    of 1281167 / 4096 steps (unrounded): training_steps = 1281167 * 360 // 4096, warmup 5 epochs of
    them. The trainer's schedule on an ImageNet-sized set; the n-th update uses the lr at global
    step n - 1."""
    cfg = TrainConfig(output_dir=str(tmp_path), resume=None, progress=False)
    assert (cfg.batch_size, cfg.base_lr, cfg.epochs, cfg.warmup_epochs) == (4096, 0.1, 360, 5.0)
    assert cfg.learning_rate() == pytest.approx(0.1 * 4096 / 256)
    steps_per_epoch = 1281167 / 4096
    total, warmup = (1281167 * 360) // 4096, 5 * steps_per_epoch
    trainer = Trainer(nn.Linear(2, 2), _ImageNetSized(), cfg)
    opt, sched = trainer.optimizer, trainer.scheduler
    assert opt.param_groups[0]["lr"] == 0.0  # the first update, global step 0
    epoch_steps = []
    for epoch in range(cfg.epochs):
        trainer.sampler.set_epoch(epoch)
        epoch_steps.append(trainer.sampler.batches_per_epoch())
    assert sum(epoch_steps) == total and set(epoch_steps) == {math.floor(steps_per_epoch), math.ceil(steps_per_epoch)}
    for itr in (1, 700, math.floor(warmup), math.ceil(warmup), total // 2, total - 1, total):
        sched.step_update(itr)
        assert opt.param_groups[0]["lr"] == pytest.approx(
            deepmind_lr(itr, cfg.learning_rate(), total, warmup), rel=1e-12, abs=1e-15), itr


def test_defaults_bf16_on_gpu_only_and_the_batch_splits_evenly():
    cfg = TrainConfig()
    assert cfg.precision_on(torch.device("cuda")) == "deepmind-bf16" and cfg.precision_on(torch.device("cpu")) == "fp32"
    assert TrainConfig(precision="deepmind-bf16").precision_on(torch.device("cpu")) == "deepmind-bf16"
    assert cfg.per_process_batch(8) == 512
    with pytest.raises(ValueError, match="does not split evenly across 3 processes"):
        cfg.per_process_batch(3)


# experiment_nfnets.py: RandAugment level per variant, 'LMM' = L layers, magnitude MM.
DEEPMIND_RA = {"F0": "405", "F1": "410", "F2": "410", "F3": "415", "F4": "415", "F5": "415", "F6": "415", "F7": "415"}


def deepmind_ra_args(op: str, m: float) -> tuple:
    """autoaugment.py's level_to_arg (cutout_const 40, translate_const 100, _MAX_LEVEL 10), signs
    dropped (DeepMind and timm negate the geometric ones at random)."""
    enhance = (m / 10) * 1.8 + 0.1
    return {"AutoContrast": (), "Equalize": (), "Invert": (), "Rotate": (m / 10 * 30.0,),
            "Posterize": (int(m / 10 * 4),), "Solarize": (int(m / 10 * 256),), "SolarizeAdd": (int(m / 10 * 110),),
            "Color": (enhance,), "Contrast": (enhance,), "Brightness": (enhance,), "Sharpness": (enhance,),
            "ShearX": (m / 10 * 0.3,), "ShearY": (m / 10 * 0.3,), "TranslateX": (m / 10 * 100.0,),
            "TranslateY": (m / 10 * 100.0,), "Cutout": (int(m / 10 * 40),)}[op]


@pytest.mark.parametrize("variant", sorted(DEEPMIND_RA))
def test_randaugment_per_variant_is_deepminds(variant):
    from nfzoo.train.augment import DeepMindBatchAugment, randaugment_magnitude

    layers, magnitude = divmod(int(DEEPMIND_RA[variant]), 100)
    assert randaugment_magnitude(f"nfnet_{variant.lower()}") == magnitude
    ra = DeepMindBatchAugment(10, randaugment_magnitude(f"nfnet_{variant.lower()}")).randaugment
    assert ra.num_layers == layers == 4 and ra.choice_weights is None  # uniform choice per layer
    ops = {getattr(op, "name", type(op).__name__): op for op in ra.ops}
    assert len(ra.ops) == len(ops) == 16
    for name, op in ops.items():
        expected = deepmind_ra_args(name, magnitude)
        if name == "Cutout":
            assert (op.pad,) == expected
            continue
        assert op.prob == 1.0  # DeepMind always applies the chosen op
        m = max(0.0, min(op.magnitude, op.magnitude_max or 10))  # what timm's op feeds its level function
        got = tuple(abs(a) for a in op.level_fn(m, op.hparams)) if op.level_fn else ()
        if name == "Solarize":  # any threshold above 255 leaves every pixel alone
            got, expected = tuple(min(v, 256) for v in got), tuple(min(v, 256) for v in expected)
        assert got == pytest.approx(expected, rel=1e-12), name
    assert ops["Rotate"].kwargs["fillcolor"] == (128, 128, 128)


def test_soft_targets_get_deepminds_label_smoothing():
    """DeepMind: y <- (1 - 0.1) * y + 0.1 / num_classes on the mixed targets, then softmax CE."""
    logits, y = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), 1)
    smoothed = 0.9 * y + 0.1 / 5
    expected = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y), expected)


def test_the_cli_takes_the_nf_regnet_recipe_for_nf_regnets():
    """``--recipe deepmind`` gives a ``dm_nf_regnet_*`` model DeepMind's NF-RegNet settings
    (nf_regnet_recipe), flags on top; other models keep the NFNet recipe."""
    from dataclasses import asdict

    from nfzoo.models.dm_nf_regnet import nf_regnet_recipe
    from nfzoo.train.train_cli import parse_args

    recipe = asdict(nf_regnet_recipe("dm_nf_regnet_b2"))
    args = parse_args(["--model", "dm_nf_regnet_b2", "--recipe", "deepmind", "--epochs", "3"])
    assert {name: getattr(args, name) for name in recipe} == recipe | {"epochs": 3}
    nfnet = parse_args(["--model", "nfnet_f0", "--recipe", "deepmind"])
    assert nfnet.weight_decay == TrainConfig().weight_decay != recipe["weight_decay"]
    small = parse_args(["--model", "dm_nf_regnet_b2"])  # the small-data recipe stays as it is
    assert small.weight_decay == TrainConfig().weight_decay
