"""Fine-tune a detector or DeepLabV3 over a zoo backbone on the generated shapes dataset, offline.

    python examples/finetune_shapes.py --model mask_rcnn --backbone resnet50_gn_ws --steps 50
    python examples/finetune_shapes.py --model faster_rcnn --backbone nfnet_f0 --agc-clip 0.01
    python examples/finetune_shapes.py --model deeplabv3 --backbone resnet50_bcn_ws --estimated-stats

Prints the loss, images/s and peak memory (CUDA when available). The logic lives in
nfzoo.downstream; this script only parses arguments.
"""
import argparse

import nfzoo  # noqa: F401  (registers the zoo models with timm)
from nfzoo.downstream import deeplabv3, faster_rcnn, mask_rcnn, use_estimated_batch_stats
from nfzoo.downstream.finetune import finetune
from nfzoo.downstream import create_optimizer
from nfzoo.downstream.shapes import CLASSES, ShapesDataset

BUILDERS = {"faster_rcnn": faster_rcnn, "mask_rcnn": mask_rcnn, "deeplabv3": deeplabv3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(BUILDERS), default="mask_rcnn")
    parser.add_argument("--backbone", default="resnet50_gn_ws", help="any timm/zoo model with features_only")
    parser.add_argument("--pretrained", action="store_true", help="load the backbone's zoo weights")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--agc-clip", type=float, default=None, help="AGC threshold, for NF backbones")
    parser.add_argument("--estimated-stats", action="store_true", help="BCN backbones: estimated batch statistics")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args()

    size = args.image_size
    extra = {} if args.model == "deeplabv3" else dict(min_size=size, max_size=size)
    model = BUILDERS[args.model](args.backbone, len(CLASSES), pretrained_backbone=args.pretrained, **extra)
    if args.estimated_stats:
        use_estimated_batch_stats(model)
    optimizer = create_optimizer(model, args.lr, weight_decay=args.weight_decay, agc_clip=args.agc_clip)
    result = finetune(
        model, ShapesDataset(args.num_images, size), optimizer, steps=args.steps,
        batch_size=args.batch_size, device=args.device, log=print)
    print(f"{args.model} / {args.backbone} on {result.device}: loss {result.losses[0]:.3f} -> "
          f"{result.losses[-1]:.3f}, {result.images_per_s:.1f} images/s, peak memory {result.peak_memory_mb:.0f} MiB")


if __name__ == "__main__":
    main()
