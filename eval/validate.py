"""Validate ImageNet accuracy of zoo models: a thin wrapper of ``nfzoo-validate``
(nfzoo.evaluation.validate_cli); run with --help for the options."""
import sys

from nfzoo.evaluation.validate_cli import main

if __name__ == "__main__":
    sys.exit(main())
