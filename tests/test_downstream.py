"""nfzoo.downstream: detection/segmentation builders over zoo backbones, micro-batch options,
the shapes dataset and the fine-tuning loop. Tiny images and heads keep the detectors fast on CPU."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

import nfzoo  # noqa: F401  (registers the zoo models)
from nfzoo.downstream import (
    FeatureBackbone, deeplabv3, faster_rcnn, feature_backbone, mask_rcnn, use_estimated_batch_stats)
from nfzoo.downstream.finetune import finetune
from nfzoo.downstream import create_optimizer
from nfzoo.downstream.shapes import CLASSES, ShapesDataset, collate
from nfzoo.layers import BatchChannelNorm2d, EstimatedBatchNorm2d, ScaledStdConv2d, WSConv2d
from nfzoo.optim import attached_agc, weight_decay_groups
from test_optim_agc import CLIP, reference_clip

# A narrow NFNet-F0 (same blocks, scaled-WS convs, gains, SE; fewer and thinner layers).
SMALL_NFNET = dict(depths=(1, 1, 1, 1), widths=(32, 64, 64, 64), stem_width=16, group_width=16)
BACKBONES = {
    "gn_ws": ("resnet50_gn_ws", {}),
    "bcn_ws": ("resnet50_bcn_ws", {}),
    "nfnet": ("nfnet_f0", SMALL_NFNET),
}
TINY_DETECTOR = dict(
    head_channels=64, min_size=64, max_size=64, rpn_batch_size_per_image=32,
    rpn_pre_nms_top_n_train=32, rpn_post_nms_top_n_train=16, rpn_pre_nms_top_n_test=32,
    rpn_post_nms_top_n_test=16, box_batch_size_per_image=16, box_detections_per_img=4)
SIZE = 64


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(num_images=4, image_size=SIZE, seed=0)


def _detector(builder, family, **kwargs):
    name, backbone_kwargs = BACKBONES[family]
    return builder(name, len(CLASSES), backbone_kwargs=backbone_kwargs, **TINY_DETECTOR, **kwargs)


def _train_step(model, loss_fn):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    loss = loss_fn()
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    backbone = next(m for m in model.modules() if isinstance(m, FeatureBackbone))
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    optimizer.step()


@pytest.mark.parametrize("family", sorted(BACKBONES))
@pytest.mark.parametrize("builder", [faster_rcnn, mask_rcnn])
def test_detector_trains_and_predicts_at_batch_1_and_2(builder, family, shapes):
    torch.manual_seed(0)
    model = _detector(builder, family)
    for batch in (1, 2):
        images, targets = collate([shapes[i] for i in range(batch)])
        _train_step(model, lambda: sum(model(images, targets).values()))
        model.eval()
        with torch.no_grad():
            detections = model(images)
        assert len(detections) == batch
        for det in detections:
            assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= TINY_DETECTOR["box_detections_per_img"]
            assert len(det["labels"]) == len(det["scores"]) == len(det["boxes"])
            if builder is mask_rcnn:
                assert det["masks"].shape[1:] == (1, SIZE, SIZE)


@pytest.mark.parametrize("family, output_stride", [("gn_ws", 16), ("bcn_ws", 8), ("nfnet", 16), ("nfnet", 8)])
def test_deeplabv3_trains_and_predicts_at_batch_1_and_2(family, output_stride, shapes):
    torch.manual_seed(0)
    name, kwargs = BACKBONES[family]
    model = deeplabv3(name, len(CLASSES), output_stride=output_stride, backbone_kwargs=kwargs)
    assert model.backbone.reductions == (output_stride,)
    for batch in (1, 2):
        images, targets = collate([shapes[i] for i in range(batch)])
        x, y = torch.stack(images), torch.stack([t["semantic"] for t in targets])
        _train_step(model, lambda: nn.functional.cross_entropy(model(x)["out"], y))
        model.eval()
        with torch.no_grad():
            assert model(x)["out"].shape == (batch, len(CLASSES), SIZE, SIZE)


def test_heads_use_gn_and_ws_as_asked():
    model = _detector(mask_rcnn, "nfnet")
    heads = [model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head]
    for head in heads:
        kinds = {type(m) for m in head.modules()}
        assert nn.GroupNorm in kinds and WSConv2d in kinds and nn.Conv2d not in kinds
        assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())
    assert type(model.roi_heads.box_predictor) is FastRCNNPredictor
    assert type(model.roi_heads.mask_predictor) is MaskRCNNPredictor
    assert type(model.roi_heads.mask_predictor.mask_fcn_logits) is nn.Conv2d  # predictors stay plain

    gn_only = _detector(faster_rcnn, "nfnet", head_norm="gn")
    assert not any(isinstance(m, WSConv2d) for m in gn_only.roi_heads.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in gn_only.roi_heads.modules())
    plain = _detector(faster_rcnn, "nfnet", head_norm=None)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in plain.roi_heads.modules())

    seg = deeplabv3("resnet50_gn_ws", 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in seg.classifier.modules())
    assert type(seg.classifier[-1]) is nn.Conv2d  # the classifier conv is not standardized


@pytest.mark.parametrize("name, kwargs, frozen, trained", [
    ("resnet50_bcn_ws", {}, ["conv1", "bn1", "layer1"], ["layer2", "layer3", "layer4"]),
    ("nfnet_f0", SMALL_NFNET, ["stem_conv1", "stages_0"], ["stages_1", "stages_3", "final_conv"]),
])
def test_trainable_layers_freezes_stem_and_first_stage(name, kwargs, frozen, trained):
    backbone = feature_backbone(name, trainable_layers=3, **kwargs)
    for module in frozen:
        assert not any(p.requires_grad for p in backbone.body.get_submodule(module).parameters()), module
    for module in trained:
        assert all(p.requires_grad for p in backbone.body.get_submodule(module).parameters()), module
    backbone.train()
    assert not any(m.training for m in backbone.body.get_submodule(frozen[-1]).modules())
    assert backbone.body.get_submodule(trained[0]).training
    assert all(p.requires_grad for p in feature_backbone(name, trainable_layers=5, **kwargs).parameters())
    assert not any(p.requires_grad for p in feature_backbone(name, trainable_layers=0, **kwargs).parameters())


def test_estimated_batch_stats_make_each_image_independent_of_the_batch():
    torch.manual_seed(0)
    backbone = feature_backbone("resnet50_bcn_ws", (1,))  # stem and first stage: 10 BCN layers
    x = torch.randn(3, 3, 32, 32)

    def first_image(model, batch):
        """Output and input gradient of image 0, in training mode, from a fresh copy of ``model``."""
        model = copy.deepcopy(model).train()
        batch = batch.clone().requires_grad_()
        out = model(batch)["0"][0]
        out.sum().backward()
        return out.detach(), batch.grad

    # ordinary batch statistics: image 0's output and gradient depend on the other images
    out_a, grad_a = first_image(backbone, x[[0, 1]])
    out_b, _ = first_image(backbone, x[[0, 2]])
    assert not torch.allclose(out_a, out_b, atol=1e-3) and grad_a[1].abs().max() > 0

    estimated = use_estimated_batch_stats(copy.deepcopy(backbone), moving_speed=0.0)
    layers = [m for m in estimated.modules() if isinstance(m, BatchChannelNorm2d)]
    assert layers and all(isinstance(m.pbn, EstimatedBatchNorm2d) for m in layers)
    out_a, grad_a = first_image(estimated, x[[0, 1]])
    out_b, _ = first_image(estimated, x[[0, 2]])
    out_alone, _ = first_image(estimated, x[[0]])
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(out_a, out_alone)
    assert grad_a[1].abs().max() == 0  # no gradient flows between images

    # with a moving speed, the estimates move (under no_grad) but gradients still do not mix
    moving = use_estimated_batch_stats(copy.deepcopy(backbone), moving_speed=0.1)
    _, grad_a = first_image(moving, x[[0, 1]])
    assert grad_a[1].abs().max() == 0
    # the estimates start from the batch part's running statistics
    before, after = (next(m for m in model.modules() if isinstance(m, BatchChannelNorm2d)).pbn
                     for model in (backbone, moving))
    torch.testing.assert_close(before.running_var, after.running_var)


def test_param_groups_decay_only_conv_and_linear_weights():
    model = _detector(faster_rcnn, "nfnet")
    groups = weight_decay_groups(model, weight_decay=1e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert not decayed & undecayed
    assert decayed | undecayed == {id(p) for p in model.parameters() if p.requires_grad}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = pname == "weight" and isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            assert (id(p) in decayed) == is_weight, f"{name}.{pname}"
    gains = [m.gain for m in model.modules() if isinstance(m, ScaledStdConv2d) and m.gain.requires_grad]
    assert gains and all(g.dim() == 4 and id(g) in undecayed for g in gains)  # 4-d, not caught by timm's 1-d rule

    bcn = feature_backbone("resnet50_bcn_ws")
    undecayed = {id(p) for g in weight_decay_groups(bcn, 1e-4) if g["weight_decay"] == 0 for p in g["params"]}
    per_group = [m.weight for m in bcn.modules() if isinstance(m, BatchChannelNorm2d)]
    assert per_group and all(w.shape == (1, 32, 1) and id(w) in undecayed for w in per_group)


def test_agc_clips_the_backbone_only():
    model = _detector(faster_rcnn, "nfnet")
    optimizer = create_optimizer(model, lr=0.1, agc_clip=0.01)
    assert attached_agc(optimizer) is not None
    backbone = model.backbone.features
    assert {id(p) for p in attached_agc(optimizer).clipped_parameters()} == {
        id(p) for p in backbone.parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e3)
    optimizer.step()  # would move the weights by ~100 without the clip
    conv = backbone.body.get_submodule("stages_3").get_submodule("0").conv1
    assert conv.weight.grad.flatten(1).norm(dim=1).max() <= 0.011 * conv.weight.flatten(1).norm(dim=1).max()
    assert (model.roi_heads.box_predictor.cls_score.weight.grad == 1e3).all()

    net = timm.create_model("nfnet_f0", **SMALL_NFNET)  # a plain timm model: its classifier weight is excluded
    clipped = {id(p) for p in attached_agc(create_optimizer(net, lr=0.1, agc_clip=0.01)).clipped_parameters()}
    assert clipped == {id(p) for name, p in net.named_parameters() if name != "head.fc.weight"}


def test_shapes_dataset_is_deterministic_and_consistent():
    data = ShapesDataset(num_images=6, image_size=SIZE, max_shapes=3, seed=1)
    for i in range(len(data)):
        image, target = data[i]
        image2, target2 = ShapesDataset(num_images=6, image_size=SIZE, max_shapes=3, seed=1)[i]
        assert torch.equal(image, image2) and all(torch.equal(target[k], target2[k]) for k in target)
        assert image.shape == (3, SIZE, SIZE) and 0 <= image.min() and image.max() <= 1
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert len(boxes) == len(labels) == len(masks) >= 1
        assert ((labels >= 1) & (labels < len(CLASSES))).all()
        for box, label, mask in zip(boxes, labels, masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert (target["semantic"][mask.bool()] == label).all()  # visible parts carry the class
        assert (target["semantic"][masks.sum(0) == 0] == 0).all()
    assert not torch.equal(data[0][0], ShapesDataset(6, SIZE, seed=2)[0][0])


@pytest.mark.parametrize("build", [
    lambda: _detector(mask_rcnn, "nfnet"),
    lambda: deeplabv3("nfnet_f0", len(CLASSES), backbone_kwargs=SMALL_NFNET),
], ids=["mask_rcnn", "deeplabv3"])
def test_short_finetune_reduces_the_loss(build, shapes):
    torch.manual_seed(0)
    model = build()
    result = finetune(model, shapes, create_optimizer(model, lr=0.02), steps=16, batch_size=2, device="cpu")
    assert len(result.losses) == 16
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < 0.8 * first, result.losses
    assert result.images_per_s > 0 and result.peak_memory_mb > 0 and result.device == "cpu"


def test_bad_inputs_get_clear_errors():
    # a zoo model: its builder says the range (other timm models get the backbone's message)
    with pytest.raises(ValueError, match=r"out_indices=\(1, 2, 3, 4, 5\) is out of range.*0 \.\.\. 4"):
        feature_backbone("resnet50_gn_ws", (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="test_vit does not support dilation"):
        deeplabv3("test_vit", 3, output_stride=16)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        feature_backbone("resnet50_gn_ws", output_stride=4)
    with pytest.raises(ValueError, match="DeepLabV3 output_stride must be one of"):
        deeplabv3("resnet50_gn_ws", 3, output_stride=32)
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        feature_backbone("resnet50_gn_ws", trainable_layers=6)
    with pytest.raises(ValueError, match="head_norm must be one of"):
        _detector(faster_rcnn, "nfnet", head_norm="bn")
    with pytest.raises(ValueError, match="no BatchChannelNorm2d layer"):
        use_estimated_batch_stats(feature_backbone("nfnet_f0", **SMALL_NFNET))
    model = _detector(faster_rcnn, "nfnet").eval()
    with pytest.raises(ValueError, match="the image list is empty"):
        model([])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        finetune(model, ShapesDataset(1, SIZE), create_optimizer(model, 0.01), steps=2, batch_size=2)


def test_the_downstream_optimizer_clips_the_backbone_exactly():
    from test_downstream import _detector, faster_rcnn
    from nfzoo.downstream import create_optimizer

    model = _detector(faster_rcnn, "nfnet")
    optimizer = create_optimizer(model, lr=0.1, agc_clip=CLIP)
    conv = model.backbone.features.body.get_submodule("stages_3").get_submodule("0").conv1
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e3)
    expected = reference_clip(conv.weight.detach().clone(), conv.weight.grad, CLIP, 1e-3)
    optimizer.step()
    torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-5, atol=0)
