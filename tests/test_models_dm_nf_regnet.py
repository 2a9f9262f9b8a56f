"""DeepMind's NF-RegNets B0-B8: size, forward, schedule of betas and drop rates, fuse, the
harness, the training recipe, naming."""
import dataclasses
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import nfzoo
from _nf_reference import NF_REGNET_PARAMS, nf_regnet_logits, nf_regnet_param_count
from nfzoo.evaluation import validate_cli
from nfzoo.models.dm_nf_regnet import VARIANTS, nf_regnet_recipe
from nfzoo.train.config import TrainConfig

NAMES = {f"dm_nf_regnet_{v.lower()}": v for v in NF_REGNET_PARAMS}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def perturbed(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model`` (float64) with every parameter off its init value (gains around 1, skip gains,
    biases and the zero-initialised classifier random); returns the state dict."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * (0.5 if v.ndim == 0 else 0.1)
          + k.endswith(".gain") for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return sd


@pytest.mark.parametrize("name", sorted(NAMES))
def test_params_are_deepminds_definition(name):
    """Parameter count of each variant equals nf_regnet.py's NF_RegNet at base.py's widths and
    depths (counted from that definition), and docs/models.md states it."""
    count = sum(p.numel() for p in meta_model(name).parameters())
    assert count == nf_regnet_param_count(NAMES[name])
    documented = re.search(rf"^\| `{name}` \| ([\d,]+) \|", DOCS.read_text(), re.M)
    assert documented is not None, f"docs/models.md has no parameter count for {name}"
    assert int(documented.group(1).replace(",", "")) == count


@torch.no_grad()
def test_forward_is_deepminds_equations():
    """B0 in float64 against the functional reference of nf_regnet.py (the other variants share
    the code and differ only in their tables), every parameter perturbed, odd input size."""
    model = timm.create_model("dm_nf_regnet_b0", num_classes=7).double().eval()
    sd = perturbed(model)
    x = torch.randn(2, 3, 45, 38, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = nf_regnet_logits(x, sd, VARIANTS["b0"].depths)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


def test_schedule_and_defaults():
    """beta restarts after each stage's first block, stochastic depth rises to 0.1, dropout
    and sizes per variant, zero-initialised classifier, SE inside the branch, no weights."""
    model = meta_model("dm_nf_regnet_b2")
    blocks = [b for stage in model.stages for b in stage]
    a2 = 0.2**2
    # B2's stages 0 and 1 hold 2 and 4 blocks: the std restarts at 1 after each first block, so stage 1's
    # first block sees sqrt(1 + 2 a2) and its second sqrt(1 + a2)
    assert [b.beta for b in blocks[:4]] == pytest.approx([1.0, (1 + a2) ** -0.5, (1 + 2 * a2) ** -0.5, (1 + a2) ** -0.5])
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx([0.1 * i / len(blocks) for i in range(len(blocks))])
    assert model.head.drop.p == VARIANTS["b2"].drop_rate == 0.3
    assert all(b.attn is not None and b.attn_last is None and b.conv2b is None for b in blocks)
    assert blocks[0].conv1.out_channels == 8 * (int(56 * 0.75) // 8)  # expansion 1 for the first block
    assert blocks[1].conv1.out_channels == 8 * (int(42 * 2.25) // 8)  # 2.25 x the block's input
    assert [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert model.num_features == 1280 * int(488 * 0.75) // 440
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 240, 240) and cfg["test_input_size"] == (3, 272, 272)
    assert cfg["crop_pct"] == pytest.approx(272 / 304) and cfg.get("crop_mode", "center") == "center"
    assert not torch.count_nonzero(timm.create_model("dm_nf_regnet_b0").head.fc.weight)
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        meta_model("dm_nf_regnet_b5", pretrained=True)


def test_names_leave_timms_nf_regnets_alone():
    assert set(timm.list_models("dm_nf_regnet_*")) == set(NAMES) <= nfzoo.ZOO_MODELS
    assert not set(NAMES) & set(timm.list_models(pretrained=True))
    assert timm.models.model_entrypoint("nf_regnet_b0").__module__ == "timm.models.nfnet"


@torch.no_grad()
def test_fuse_keeps_the_squeeze_excite_inside_the_branch():
    model = timm.create_model("dm_nf_regnet_b0", depths=(1, 2, 1, 1)).double().eval()
    perturbed(model)
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    fused = nfzoo.fuse(model)
    assert all(b.attn is not None for b in fused.stages[1])
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)


def test_harness_validates_by_name(capsys):
    argv = ["--model", "dm_nf_regnet_b0", "--img-size", "32", "--demo-images", "2", "--batch-size", "2",
            "--workers", "0", "--no-progress"]
    assert validate_cli.main(argv) == 0
    assert re.search(r"^dm_nf_regnet_b0\s.*random", capsys.readouterr().out, re.M)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_recipe_is_experiment_nf_regnets(name):
    """experiment_nf_regnets.py: batch 1024, lr 0.4 not scaled by the batch, cosine to 0.001,
    5 warmup epochs, SGD Nesterov 0.9, no AGC, no bf16, weight decay 5e-5 + 1e-5 * level;
    every field is a TrainConfig field, so the trainer takes it as it is."""
    recipe = nf_regnet_recipe(name)
    cfg = TrainConfig(**dataclasses.asdict(recipe))
    level = int(NAMES[name][1:])
    assert recipe.weight_decay == pytest.approx(5e-5 + 1e-5 * level, rel=1e-12)
    assert (cfg.batch_size, cfg.learning_rate(), cfg.min_lr, cfg.warmup_epochs, cfg.epochs) == (1024, 0.4, 0.001, 5, 360)
    assert (cfg.momentum, cfg.nesterov, cfg.agc_threshold(), cfg.label_smoothing, cfg.ema_decay) == \
        (0.9, True, None, 0.1, 0.99999)
    assert cfg.precision == "fp32"


def test_recipe_of_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="dm_nf_regnet_b9.*dm_nf_regnet_b0"):
        nf_regnet_recipe("dm_nf_regnet_b9")
