#!/usr/bin/env python
"""Write the Hugging Face Hub repository folder for converted weights and upload it. Example:

    python weights/publish.py converted/nfnet_f0 --name nfnet_f0.dm_in1k --out hub/nfnet_f0 --dry-run

OUT must be a new or empty folder, apart from the weights folder; --overwrite lets it be one
that holds files already: model.safetensors, config.json and README.md are replaced, every other
file is kept (and not uploaded). Without --dry-run those three files are uploaded to the
manifest's publish_repo (or --repo) with the token from HF_TOKEN or `hf auth login`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from nfzoo.cli import ArgumentParser, existing_dir, finite_float, output_dir, run_cli
from nfzoo.weights import checkpoint, manifest
from nfzoo.weights.publish import Measured, upload, write_repo

PROG = "weights/publish.py"


def manifest_tag(text: str) -> str:
    if text not in manifest():
        raise argparse.ArgumentTypeError(f"{text!r} is not a tag of the nfzoo manifest; "
                                         f"known: {', '.join(sorted(manifest()))}")
    return text


def repo_id(text: str) -> str:
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hub repository id such as owner/name") from None
    if text.count("/") != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hub repository id such as owner/name")
    return text


def _measured(parser: ArgumentParser, values: list[str] | None) -> Measured | None:
    if values is None:
        return None
    top1, top5, setup = values
    try:
        return Measured(finite_float(top1), finite_float(top5), setup)
    except (argparse.ArgumentTypeError, ValueError) as e:
        parser.error(f"argument --measured: {e}")


def _run(argv: Sequence[str] | None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights_dir", type=existing_dir, help="folder written by weights/convert.py")
    parser.add_argument("--name", required=True, type=manifest_tag, help="manifest tag, e.g. nfnet_f0.dm_in1k")
    parser.add_argument("--out", required=True, type=output_dir, help="where to write the repository folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the three files nfzoo writes in an --out that holds files (others are kept)")
    parser.add_argument("--repo", type=repo_id, help="Hub repository (default: the manifest's publish_repo)")
    parser.add_argument("--measured", nargs=3, metavar=("TOP1", "TOP5", "SETUP"),
                        help='measured accuracy (%%) for the model card, e.g. 83.5 96.6 "nfzoo eval, H100"')
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder")
    args = parser.parse_args(argv)
    measured = _measured(parser, args.measured)
    folder = write_repo(args.weights_dir, args.name, args.out, measured, overwrite=args.overwrite)
    print(f"wrote {folder}")
    if not args.dry_run:
        print(upload(folder, args.repo or checkpoint(args.name).publish_repo, private=args.private))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
