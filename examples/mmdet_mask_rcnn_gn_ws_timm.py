# mmdetection 3.x config: Mask R-CNN, GN+WS everywhere, over the zoo's resnet50_gn_ws through
# mmpretrain's TIMMBackbone. DOCUMENTED ONLY: mmdet/mmpretrain are not installed in nfzoo's CI.
# Run from an mmdetection checkout: `python tools/train.py path/to/this_file.py`.
# mmdet's GN+WS neck and heads (3.x file name; 2.x: mask_rcnn_r50_fpn_gn_ws-all_2x_coco.py)
_base_ = '../configs/gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py'

# `nfzoo` registers the zoo models with timm; `mmpretrain.models` registers TIMMBackbone.
custom_imports = dict(imports=['mmpretrain.models', 'nfzoo'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.TIMMBackbone',
        model_name='resnet50_gn_ws',   # or resnet50_bcn_ws, nfnet_f0, ... (any zoo model)
        features_only=True,
        pretrained=True,               # the zoo's weights via timm (Hugging Face Hub / manifest)
        out_indices=(1, 2, 3, 4)),     # C2-C5, strides 4-32, as mmdet's ResNet
    neck=dict(in_channels=[256, 512, 1024, 2048]))  # nfnet_f0: [256, 512, 1536, 3072]
