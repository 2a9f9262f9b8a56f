#!/usr/bin/env python
"""Convert an original release (DeepMind Haiku pickle, WS/BCN .pth.tar, OpenMMLab mirror) to
``OUT/model.safetensors`` in nfzoo's layout. Example:

    python weights/convert.py F0_haiku.npz --name nfnet_f0.dm_in1k --out converted/nfnet_f0
"""
import argparse
import sys

from nfzoo.weights.convert import SOURCE_FORMATS, convert


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the downloaded release file")
    parser.add_argument("--name", required=True, help="manifest tag, e.g. nfnet_f0.dm_in1k")
    parser.add_argument("--out", required=True, help="output folder (model.safetensors, conversion.json)")
    parser.add_argument("--format", choices=sorted(SOURCE_FORMATS), help="source format (default: the manifest's)")
    args = parser.parse_args()
    try:
        record = convert(args.source, args.name, args.out, source_format=args.format)
    except (ValueError, OSError) as e:  # CheckpointError, a filter refusing the file, a full disk
        print(f"error: {e}\nNothing was written.", file=sys.stderr)
        return 1
    print(f"{args.out}/{record.file}: {record.num_params / 1e6:.2f} M parameters, sha256 {record.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
