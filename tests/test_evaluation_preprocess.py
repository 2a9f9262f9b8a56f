"""The harness preprocesses as the checkpoint's source evaluated: timm's eval transform for
the model's pretrained cfg at its test size, and the same as a pipeline written here from the
reference facts."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.models import get_pretrained_cfg
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import nfzoo  # noqa: F401  (registers the NFNets' pretrained cfgs)
from eval_helpers import MEAN, STD, random_image
from nfzoo.evaluation import eval_data_config, eval_transform
from nfzoo.evaluation.sources import open_source
from nfzoo.weights.manifest import manifest, pretrained_cfg


class CfgOnly(nn.Module):
    """Stands for a model: the harness only reads its pretrained_cfg."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.pretrained_cfg = cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 200), (180, 340), (257, 257)]):
        (root / f"class{i}").mkdir()
        random_image(rng, size).save(root / f"class{i}" / "a.JPEG", quality=95)
    (root / "map.txt").write_text("".join(f"class{i}\n" for i in range(3)))
    return root


def _harness_tensors(folder, model, **overrides):
    source = open_source(folder, class_map=folder / "map.txt")
    transform = eval_transform(eval_data_config(model, **overrides))
    return [transform(source.open(i)) for i in range(len(source))], source


def test_dm_nfnet_f0_cfg_matches_timm_and_the_reference_pipeline(folder):
    model = CfgOnly(get_pretrained_cfg("dm_nfnet_f0").to_dict())
    ours, source = _harness_tensors(folder, model)
    timm_tf = timm.data.create_transform(**timm.data.resolve_model_data_config(model, use_test_size=True))
    # timm's pretrained cfg of dm_nfnet_f0: 256 px, squash crop, crop_pct 0.9, bicubic
    reference = T.Compose([T.Resize((math.floor(256 / 0.9),) * 2, InterpolationMode.BICUBIC), T.CenterCrop(256),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    for i, x in enumerate(ours):
        assert x.shape == (3, 256, 256)
        torch.testing.assert_close(x, timm_tf(source.open(i)), rtol=0, atol=0)
        torch.testing.assert_close(x, reference(source.open(i)), rtol=0, atol=0)


def test_manifest_cfg_center_crop_and_overrides(folder):
    cfg = pretrained_cfg("resnet50_gn_ws.jhu_in1k", input_size=(3, 224, 224))
    ours, source = _harness_tensors(folder, CfgOnly(cfg), img_size=96, crop_pct=0.75)
    reference = T.Compose([T.Resize(128, InterpolationMode.BILINEAR), T.CenterCrop(96), T.ToTensor(), T.Normalize(MEAN, STD)])
    for i, x in enumerate(ours):
        assert x.shape == (3, 96, 96)
        torch.testing.assert_close(x, reference(source.open(i)), rtol=0, atol=0)


def test_test_input_size_wins_over_train_size():
    cfg = eval_data_config(CfgOnly(get_pretrained_cfg("dm_nfnet_f3").to_dict()))
    assert cfg["input_size"] == (3, 416, 416) and cfg["crop_pct"] == 0.94 and cfg["crop_mode"] == "squash"


def _deepmind_resize_then_crop(img: Image.Image, test_size: int) -> torch.Tensor:
    """DeepMind's eval geometry (nfnets/dataset.py, _decode_and_resize_then_crop with 32 px of
    padding), with PIL's bicubic: the whole image to a (test + 32) square, then the crop at
    offset ((scale - test) + 1) // 2; then ImageNet normalization."""
    scale = test_size + 32
    top = left = ((scale - test_size) + 1) // 2
    squashed = img.resize((scale, scale), Image.BICUBIC)
    crop = np.asarray(squashed.crop((left, top, left + test_size, top + test_size)), dtype=np.float32) / 255
    return torch.from_numpy((crop - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).permute(2, 0, 1)


NFNET_NAMES = sorted(n for n in manifest() if n.startswith("nfnet_f")) + ["nfnet_f7"]


@pytest.mark.parametrize("name", NFNET_NAMES)
def test_nfnet_eval_is_deepminds_squash_at_the_test_size(name):
    """Harness and timm (use_test_size=True) both give DeepMind's resize-then-crop on a
    non-square image, at the variant's test size."""
    model = CfgOnly(timm.models.get_pretrained_cfg(name).to_dict())
    test_size = model.pretrained_cfg["test_input_size"][-1]
    img = random_image(np.random.default_rng(1), (150, 97))
    expected = _deepmind_resize_then_crop(img, test_size)
    harness = eval_transform(eval_data_config(model))(img)
    timm_tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model, use_test_size=True))
    assert expected.shape == (3, test_size, test_size)
    torch.testing.assert_close(harness, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(timm_tf(img), expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- TF's bicubic resize
def _keys(distance: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (Keys 1981), written from its definition."""
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _tf_axis_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 weights of TF's half-pixel bicubic along one axis: sample point
    (o + 0.5) * in / out - 0.5, its fraction rounded to TF's 1/1024 table step, four taps,
    taps outside the image dropped and the rest renormalised to sum 1."""
    w = np.zeros((out_size, in_size))
    for o in range(out_size):
        p = (o + 0.5) * in_size / out_size - 0.5
        f = math.floor(p)
        t = np.rint((p - f) * 1024) / 1024
        for tap in range(f - 1, f + 3):
            if 0 <= tap < in_size:
                w[o, tap] = _keys(tap - f - t)
        w[o] /= w[o].sum()
    return w


def _tf_resize_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A slow direct formula: out[c, y, x] = sum_i sum_j wy[y, i] wx[x, j] image[c, i, j]."""
    wy, wx = _tf_axis_weights(image.shape[1], size[0]), _tf_axis_weights(image.shape[2], size[1])
    out = np.zeros((image.shape[0], *size))
    for c in range(image.shape[0]):
        for y in range(size[0]):
            for x in range(size[1]):
                out[c, y, x] = sum(wy[y, i] * wx[x, j] * image[c, i, j]
                                   for i in np.nonzero(wy[y])[0] for j in np.nonzero(wx[x])[0])
    return out


@pytest.mark.parametrize("in_hw, out_hw", [((5, 7), (13, 11)), ((40, 31), (17, 9)), ((9, 9), (9, 9)), ((2, 3), (6, 1))])
def test_tf_bicubic_matches_a_float64_transcription_of_the_kernel(in_hw, out_hw):
    from nfzoo.evaluation.tf_resize import tf_bicubic_resize

    image = np.random.default_rng(2).integers(0, 256, (3, *in_hw)).astype(np.float64)
    ours = tf_bicubic_resize(torch.from_numpy(image).to(torch.uint8), out_hw)
    assert ours.dtype == torch.float32 and ours.shape == (3, *out_hw)
    np.testing.assert_allclose(ours.double().numpy(), _tf_resize_reference(image, out_hw), rtol=0, atol=2e-3)


def test_tf_bicubic_keeps_overshoots_and_fractions():
    """No clamping to 0..255 and no rounding to 8 bits, unlike PIL's bicubic."""
    from nfzoo.evaluation.tf_resize import tf_bicubic_resize

    edge = torch.zeros(1, 4, 8, dtype=torch.uint8)
    edge[..., 4:] = 255
    out = tf_bicubic_resize(edge, (4, 20))
    assert out.min() < 0 and out.max() > 255 and (out != out.round()).any()


def test_tf_bicubic_eval_is_deepminds_pipeline_at_test_plus_32():
    """--resize tf-bicubic for an NFNet: the whole image to (test + 32)^2 with TF's resize, the
    crop at ((scale - test) + 1) // 2, then (x - 255 mean) / (255 std), as nfnets/dataset.py."""
    model = CfgOnly(timm.models.get_pretrained_cfg("nfnet_f0.dm_in1k").to_dict())
    img = random_image(np.random.default_rng(4), (23, 17))
    size = 20
    ours = eval_transform(eval_data_config(model, img_size=size), "tf-bicubic")(img)
    scale = size + 32
    resized = _tf_resize_reference(np.asarray(img, dtype=np.float64).transpose(2, 0, 1), (scale, scale))
    top = ((scale - size) + 1) // 2
    crop = resized[:, top:top + size, top:top + size]
    expected = (crop - 255 * np.array(MEAN)[:, None, None]) / (255 * np.array(STD)[:, None, None])
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", [68, 100])
def test_img_size_keeps_deepminds_margin_on_nfnets(size):
    """--img-size on an NFNet: resize to size + 32, crop size (DeepMind's rule), not the test
    size's crop_pct; 68 is a size where size / (size + 32) as a float would land one pixel short."""
    model = CfgOnly(timm.models.get_pretrained_cfg("nfnet_f0.dm_in1k").to_dict())
    img = random_image(np.random.default_rng(5), (150, 97))
    harness = eval_transform(eval_data_config(model, img_size=size))(img)
    torch.testing.assert_close(harness, _deepmind_resize_then_crop(img, size), rtol=0, atol=1e-6)
