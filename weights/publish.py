#!/usr/bin/env python
"""Write the Hugging Face Hub repository folder for converted weights and upload it. Example:

    python weights/publish.py converted/nfnet_f0 --name nfnet_f0.dm_in1k --out hub/nfnet_f0 --dry-run

Without --dry-run the folder is uploaded to the manifest's publish_repo (or --repo) with the
token from HF_TOKEN or `huggingface-cli login`.
"""
import argparse
import sys

from nfzoo.weights import checkpoint
from nfzoo.weights.publish import Measured, upload, write_repo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights_dir", help="folder written by weights/convert.py")
    parser.add_argument("--name", required=True, help="manifest tag, e.g. nfnet_f0.dm_in1k")
    parser.add_argument("--out", required=True, help="where to write the repository folder")
    parser.add_argument("--repo", help="Hub repository (default: the manifest's publish_repo)")
    parser.add_argument("--measured", nargs=3, metavar=("TOP1", "TOP5", "SETUP"),
                        help='measured accuracy for the model card, e.g. 83.5 96.6 "nfzoo eval, H100"')
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder")
    args = parser.parse_args()
    measured = Measured(float(args.measured[0]), float(args.measured[1]), args.measured[2]) if args.measured else None
    try:
        folder = write_repo(args.weights_dir, args.name, args.out, measured)
    except ValueError as e:  # CheckpointError, or a model family's checkpoint filter refusing the file
        print(f"error: {e}\nNothing was written.", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if not args.dry_run:
        print(upload(folder, args.repo or checkpoint(args.name).publish_repo, private=args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
