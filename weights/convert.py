#!/usr/bin/env python
"""Convert an original release (DeepMind Haiku pickle, WS/BCN .pth.tar, OpenMMLab mirror) to
``OUT/model.safetensors`` in nfzoo's layout, with its record ``OUT/conversion.json``. Example:

    python weights/convert.py F0_haiku.npz --name nfnet_f0.dm_in1k --out converted/nfnet_f0

OUT must be a new or empty folder, apart from the source; --overwrite lets it be one that holds
files already: the two files above are replaced, every other file is kept.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nfzoo.cli import ArgumentParser, existing_file, output_dir, run_cli
from nfzoo.weights.convert import RECORD_FILE, SOURCE_FORMATS, WEIGHTS_FILE, convert

PROG = "weights/convert.py"


def _run(argv: Sequence[str] | None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=existing_file, help="the downloaded release file")
    parser.add_argument("--name", required=True,
                        help="manifest tag, e.g. nfnet_f0.dm_in1k (or a timm model name, with --format)")
    parser.add_argument("--out", required=True, type=output_dir, help=f"output folder ({WEIGHTS_FILE}, {RECORD_FILE})")
    parser.add_argument("--format", choices=sorted(SOURCE_FORMATS), help="source format (default: the manifest's)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {WEIGHTS_FILE} and {RECORD_FILE} in an --out that holds files (others are kept)")
    args = parser.parse_args(argv)
    record = convert(args.source, args.name, args.out, source_format=args.format, overwrite=args.overwrite)
    print(f"{args.out / record.file}: {record.num_params / 1e6:.2f} M parameters, sha256 {record.sha256}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
