"""nfzoo.train's input pipeline against transcriptions of DeepMind's (nfnets/dataset.py) and of
the TensorFlow op it calls (sample_distorted_bounding_box_op.cc), written here with NumPy from
the sources' semantics and fed the same random draws (torch's generator, in the order the
implementations document)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import nfzoo.train.crop as crop_module
from nfzoo.train import TrainConfig, Trainer
from nfzoo.train.augment import DeepMindBatchAugment, train_transform
from nfzoo.train.crop import DeepMindRandomCrop, sample_distorted_box
from nfzoo.train.steps import StepBatchSampler, total_steps, warmup_steps

f32 = np.float32


# -- TensorFlow's sample_distorted_bounding_box, the whole image as the box ---------------------
def tf_sample_distorted_bounding_box(height, width, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
                                     area_range=(0.08, 1.0), max_attempts=10):
    """SampleDistortedBoundingBoxBaseOp::DoCompute and GenerateRandomCrop, line by line. Random
    draws: RandFloat() -> torch.rand(()), Uniform(n) -> torch.randint(n, ()) (both [0, n))."""
    def rand_float():
        return f32(torch.rand(()).item())

    def uniform(n):
        return int(torch.randint(n, ()).item())

    def lrintf(v):
        return int(np.rint(f32(v)))

    def generate_random_crop(original_width, original_height, min_relative, max_relative, aspect_ratio):
        min_area = f32(min_relative) * f32(original_width) * f32(original_height)
        max_area = f32(max_relative) * f32(original_width) * f32(original_height)
        h = lrintf(np.sqrt(f32(min_area / aspect_ratio)))
        max_height = lrintf(np.sqrt(f32(max_area / aspect_ratio)))
        if lrintf(f32(max_height) * aspect_ratio) > original_width:
            k_eps = float(f32(0.0000001))
            max_height = int((original_width + 0.5 - k_eps) / float(aspect_ratio))  # double arithmetic
            if lrintf(f32(max_height) * aspect_ratio) > original_width:
                max_height -= 1
        if max_height > original_height:
            max_height = original_height
        if h >= max_height:
            h = max_height
        if h < max_height:
            h += uniform(max_height - h + 1)
        w = lrintf(f32(h) * aspect_ratio)
        area = f32(w * h)
        if area < min_area:
            h += 1
            w = lrintf(f32(h) * aspect_ratio)
            area = f32(w * h)
        if area > max_area:
            h -= 1
            w = lrintf(f32(h) * aspect_ratio)
            area = f32(w * h)
        if area < min_area or area > max_area or w > original_width or h > original_height or w <= 0 or h <= 0:
            return None
        y = uniform(original_height - h) if h < original_height else 0
        x = uniform(original_width - w) if w < original_width else 0
        return x, y, x + w, y + h

    object_area = f32((width - 0) * (height - 0))
    for _ in range(max_attempts):
        aspect = rand_float() * (f32(aspect_ratio_range[1]) - f32(aspect_ratio_range[0])) + f32(aspect_ratio_range[0])
        rect = generate_random_crop(width, height, area_range[0], area_range[1], aspect)
        if rect is None:
            continue
        crop_area = f32((rect[2] - rect[0]) * (rect[3] - rect[1]))
        if crop_area >= 1.0 and crop_area / object_area >= f32(min_object_covered):
            return rect[1], rect[0], rect[3] - rect[1], rect[2] - rect[0]
    return 0, 0, height, width


SIZES = [(375, 500), (500, 375), (224, 224), (32, 1000), (1000, 32), (7, 9), (2, 2), (1, 1), (64, 3), (333, 334)]


@pytest.mark.parametrize("height,width", SIZES)
def test_crop_box_is_tensorflows(height, width):
    """The same boxes as the kernel's arithmetic, over many draws; every box (bar the whole image)
    covers at least 10 % of the image (min_object_covered) and lies inside it without touching
    the bottom or right edge unless it spans the image (Uniform(n) draws from [0, n))."""
    for seed in range(60):
        torch.manual_seed(seed)
        expected = tf_sample_distorted_bounding_box(height, width)
        torch.manual_seed(seed)
        got = sample_distorted_box(height, width)
        assert got == expected, (seed, got, expected)
        top, left, h, w = got
        assert h * w >= 0.1 * height * width
        assert 0 <= top and top + h <= height and (top + h < height or h == height)
        assert 0 <= left and left + w <= width and (left + w < width or w == width)


def test_crop_falls_back_to_deepminds_padded_centre_crop(monkeypatch):
    """When the sampled box is the whole image: _decode_and_center_crop's box, scale =
    min(H, W) / (size + 32) of the output size, offsets rounded up; pixels encode coordinates."""
    height, width, size = 92, 131, 24  # odd margins: the offsets round up
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    img = Image.fromarray(np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8))
    monkeypatch.setattr(crop_module, "sample_distorted_box", lambda h, w: (0, 0, h, w))
    out = np.asarray(DeepMindRandomCrop(size)(img))
    scale = min(f32(height) / f32(size + 32), f32(width) / f32(size + 32))
    side = int(f32(scale) * f32(size))
    top, left = ((height - side) + 1) // 2, ((width - side) + 1) // 2
    assert out.shape[:2] == (side, side)
    assert out[0, 0, 0] == top and out[0, 0, 1] == left and out[-1, -1, 0] == top + side - 1


def test_train_transform_crops_flips_and_resizes_without_colour_changes():
    """A uint8 CHW tensor at the train size; a constant image stays that constant (no jitter)."""
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    out = train_transform(16)(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert out.view(3, -1).unique(dim=1).tolist() == [[10], [20], [30]]


# -- my_mixup_cutmix / my_mixup / my_cutmix and cutmix_padding ---------------------------------
def cutmix_padding(h, w, r_x, r_y, image1_proportion):
    """dataset.cutmix_padding for given draws: the (h, w) mask, 1 inside the box."""
    patch_length_ratio = np.sqrt(f32(1) - f32(image1_proportion))
    r_w = int(f32(patch_length_ratio) * f32(w))  # tf.cast(float32 -> int32) truncates
    r_h = int(f32(patch_length_ratio) * f32(h))
    bbx1, bby1 = np.clip(r_x - r_w // 2, 0, w), np.clip(r_y - r_h // 2, 0, h)
    bbx2, bby2 = np.clip(r_x + r_w // 2, 0, w), np.clip(r_y + r_h // 2, 0, h)
    pad_top, pad_left, pad_bottom, pad_right = bby1, bbx1, max(h - bby2, 0), max(w - bbx2, 0)
    return np.pad(np.ones((bby2 - bby1, bbx2 - bbx1), np.float32),
                  [[pad_top, pad_bottom], [pad_left, pad_right]], constant_values=0)


def deepmind_mix(images, labels, num_classes, mixup_alpha, cutmix_alpha):
    """my_mixup_cutmix (both on), my_mixup or my_cutmix (one on) on 2B NHWC float images, then
    experiment._loss_fn's target y = ratio * one_hot(labels) + (1 - ratio) * one_hot(mix_labels).
    Draws the collate's documented random numbers: MixUp ratios, then CutMix x, y, proportion."""
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    parts = 4 if mixup_alpha and cutmix_alpha else 2
    bs = n // parts
    one_hot = np.eye(num_classes, dtype=np.float32)
    groups = []
    if mixup_alpha:
        mixup_ratio = torch.distributions.Beta(mixup_alpha, mixup_alpha).sample((bs,)).numpy()
        groups.append(("mixup", mixup_ratio))
    if cutmix_alpha:
        r_x, r_y = torch.randint(w, (bs,)).numpy(), torch.randint(h, (bs,)).numpy()
        proportion = torch.distributions.Beta(cutmix_alpha, cutmix_alpha).sample((bs,)).numpy()
        masks = np.stack([cutmix_padding(h, w, r_x[i], r_y[i], proportion[i]) for i in range(bs)])[..., None]
        groups.append(("cutmix", masks))
    out_images, out_targets, pairs = [], [], []
    for g, (kind, draw) in enumerate(groups):
        first, second = np.arange(2 * g * bs, (2 * g + 1) * bs), np.arange((2 * g + 1) * bs, (2 * g + 2) * bs)
        if kind == "mixup":
            ratio = draw[:, None, None, None]
            out_images.append(ratio * images[first] + (1.0 - ratio) * images[second])
            ratio = draw
        else:
            out_images.append(draw * images[first] + (1.0 - draw) * images[second])
            ratio = draw.mean(axis=(1, 2, 3))  # cutmix_ratio = reduce_mean(mask)
        out_targets.append(ratio[:, None] * one_hot[labels[first]] + (1.0 - ratio[:, None]) * one_hot[labels[second]])
        pairs += list(zip(first, second))
    return np.concatenate(out_images), np.concatenate(out_targets), pairs


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.2, 1.0), (0.2, 0.0), (0.0, 1.0), (0.4, 0.5)])
def test_mixing_is_deepminds(mixup_alpha, cutmix_alpha, channels):
    """2B = 16 raw 8x8 images whose pixels encode their index and whose label is their index:
    the collate's B outputs and targets equal the transcription's; each raw image appears in
    exactly one output; a MixUp target's weights are the ratio its pixels show, a CutMix
    target's the area fractions of the two images' pixels."""
    n, size, classes = 16, 8, 16
    values = 3.0 + 11.0 * np.arange(n, dtype=np.float32)  # distinct pixel values, each < 255
    images = np.broadcast_to(values[:, None, None, None], (n, size, size, channels)).copy()
    labels = np.arange(n)
    samples = [(torch.from_numpy(images[i]).permute(2, 0, 1).to(torch.uint8), int(labels[i])) for i in range(n)]
    aug = DeepMindBatchAugment(classes, ra_magnitude=None, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                               mean=(0.0,) * channels, std=(1 / 255,) * channels)
    assert aug.inputs_per_output == 2
    for seed in range(5):
        torch.manual_seed(seed)
        x, y = aug(samples)
        torch.manual_seed(seed)
        ref_x, ref_y, pairs = deepmind_mix(images, labels, classes, mixup_alpha, cutmix_alpha)
        np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ref_x, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-6, atol=1e-7)
        assert x.shape == (n // 2, channels, size, size) and y.shape == (n // 2, classes)
        assert sorted(i for pair in pairs for i in pair) == list(range(n))  # each raw image once
        cutmix_from = n // 2 if mixup_alpha and cutmix_alpha else 0 if cutmix_alpha else n
        for j, (a, b) in enumerate(pairs):
            assert set(np.flatnonzero(y[j].numpy())) <= {a, b}
            pixels = x[j, 0]
            if 2 * j < cutmix_from or not cutmix_alpha:  # MixUp: the pixel value gives the ratio
                ratio = (pixels.mean().item() - values[b]) / (values[a] - values[b])
                assert y[j, a].item() == pytest.approx(ratio, abs=1e-4)
                torch.testing.assert_close(pixels, torch.full_like(pixels, pixels[0, 0].item()))
            else:  # CutMix: the area of each image's pixels is its label weight
                assert set(pixels.unique().tolist()) <= {values[a], values[b]}
                assert (pixels == values[a]).float().mean().item() == pytest.approx(y[j, a].item(), abs=1e-6)


def test_no_mixing_takes_one_image_per_output_and_uneven_parts_are_refused():
    samples = [(torch.full((1, 4, 4), i, dtype=torch.uint8), i) for i in range(6)]
    plain = DeepMindBatchAugment(6, None, mixup_alpha=0, cutmix_alpha=0, mean=(0.0,), std=(1 / 255,))
    assert plain.inputs_per_output == 1
    x, y = plain(samples)
    assert torch.equal(x[:, 0, 0, 0], torch.arange(6.0)) and torch.equal(y, torch.eye(6))
    with pytest.raises(ValueError, match="4 equal parts"):
        DeepMindBatchAugment(6, None)(samples)


# -- the step stream -----------------------------------------------------------------------
def reference_stream(num_samples, seed, permutations):
    return torch.cat([torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + k))
                      for k in range(permutations)])


@pytest.mark.parametrize("world_size", [1, 2])
def test_steps_draw_twice_the_batch_from_one_stream_and_resume(world_size):
    """27 images, global batch 4, 2 raw images per output: step s takes stream positions
    [8s, 8s + 8), rank r every world_size-th; epoch e has (e + 1) * 27 // 4 - e * 27 // 4 steps;
    starting at any step gives the rest of the uninterrupted order."""
    n, batch, seed, epochs = 27, 4, 3, 5
    samplers = [StepBatchSampler(n, batch // world_size, seed, r, world_size, images_per_output=2)
                for r in range(world_size)]
    stream = reference_stream(n, seed, 12)  # 33 steps x 8 images
    step = 0
    for epoch in range(epochs):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert all(len(b) == (epoch + 1) * n // batch - epoch * n // batch for b in per_rank)
        for i in range(len(per_rank[0])):
            chunk = stream[(step + i) * 8:(step + i + 1) * 8]
            for r in range(world_size):
                assert per_rank[r][i] == chunk[r::world_size].tolist()
            assert sorted(sum((per_rank[r][i] for r in range(world_size)), [])) == sorted(chunk.tolist())
        samplers[0].set_epoch(epoch, start_batch=2)
        assert list(samplers[0]) == per_rank[0][2:]
        step += len(per_rank[0])
    assert step == total_steps(epochs, n, batch) == epochs * n // batch


def test_step_counts_are_deepminds_formula():
    """experiment_nfnets.py: training_steps = images * epochs // batch; warmup 5 * images / batch."""
    assert total_steps(360, 1281167, 4096) == (1281167 * 360) // 4096
    assert warmup_steps(5.0, 1281167, 4096) == 5 * (1281167 / 4096)
    with pytest.raises(ValueError, match="no full step"):
        StepBatchSampler(7, 4, world_size=2)


class _IndexImages(Dataset):
    """uint8 1x8x8 images whose pixels are their index; label = index."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.full((1, 8, 8), i, dtype=torch.uint8), i


def test_trainer_feeds_the_collate_twice_the_batch(tmp_path):
    """With MixUp/CutMix each step's collate receives 2B distinct images and yields B."""
    seen = []
    aug = DeepMindBatchAugment(24, None, mean=(0.0,), std=(1.0,))

    def collate(samples):
        seen.append([s[1] for s in samples])
        return aug(samples)

    collate.inputs_per_output = aug.inputs_per_output
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, warmup_epochs=0, agc_clip=None, ema_decay=None, ckpt_every=0,
                      eval_every=0, progress=False, plot=False, output_dir=str(tmp_path), resume=None)
    Trainer(model, _IndexImages(), cfg, collate_fn=collate).fit()
    assert len(seen) == 24 // 4 and all(len(s) == len(set(s)) == 8 for s in seen)
