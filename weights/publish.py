#!/usr/bin/env python
"""Write the Hugging Face Hub repository folder for converted weights, or for a model trained
by `python -m nfzoo.train`, and upload it. Examples:

    python weights/publish.py converted/nfnet_f0 --name nfnet_f0.dm_in1k --out hub/nfnet_f0 --dry-run
    python weights/publish.py --checkpoint runs/x/last.pth --repo me/my-model --out hub/x \
        --results-file runs/x/val.json --dry-run

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

from nfzoo.cli import ArgumentParser, existing_dir, existing_file, finite_float, output_dir, run_cli
from nfzoo.weights import checkpoint, manifest
from nfzoo.weights.publish import Measured, measured_from_results, upload, write_repo, write_trained_repo

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
    parser.add_argument("weights_dir", nargs="?", type=existing_dir,
                        help="folder written by weights/convert.py (with --name)")
    parser.add_argument("--name", type=manifest_tag, help="manifest tag of WEIGHTS_DIR, e.g. nfnet_f0.dm_in1k")
    parser.add_argument("--checkpoint", type=existing_file, metavar="FILE",
                        help="instead of WEIGHTS_DIR: a checkpoint of python -m nfzoo.train (last.pth); needs --repo")
    parser.add_argument("--out", required=True, type=output_dir, help="where to write the repository folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the three files nfzoo writes in an --out that holds files (others are kept)")
    parser.add_argument("--repo", type=repo_id, help="Hub repository (default: the manifest's publish_repo)")
    measured = parser.add_mutually_exclusive_group()
    measured.add_argument("--measured", nargs=3, metavar=("TOP1", "TOP5", "SETUP"),
                          help='measured accuracy (%%) for the model card, e.g. 83.5 96.6 "nfzoo eval, H100"')
    measured.add_argument("--results-file", type=existing_file, metavar="FILE",
                          help="the results file of nfzoo-validate for these weights: its top-1, top-5 and the "
                               "data they were measured on go on the model card")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder")
    args = parser.parse_args(argv)
    if (args.weights_dir is None) == (args.checkpoint is None):
        parser.error("give either WEIGHTS_DIR (with --name) or --checkpoint FILE (with --repo)")
    if args.weights_dir is not None and args.name is None:
        parser.error("WEIGHTS_DIR needs --name, the manifest tag of its weights")
    if args.checkpoint is not None and (args.name is not None or args.repo is None):
        parser.error("--checkpoint needs --repo (the Hub repository the card names) and takes no --name")
    measured = _measured(parser, args.measured)
    if args.checkpoint is not None:
        if args.results_file is not None:
            measured = measured_from_results(args.results_file)
        folder = write_trained_repo(args.checkpoint, args.out, args.repo, measured, overwrite=args.overwrite)
    else:
        if args.results_file is not None:
            measured = measured_from_results(args.results_file, checkpoint(args.name).model)
        folder = write_repo(args.weights_dir, args.name, args.out, measured, overwrite=args.overwrite)
    print(f"wrote {folder}")
    if not args.dry_run:
        print(upload(folder, args.repo or checkpoint(args.name).publish_repo, private=args.private))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
