#!/usr/bin/env python
"""Reproduce the GN/WS batch-size table and the AGC claim on Fashion-MNIST (see docs/reproduction.md).

    nice -n 10 python eval/reproduce.py            # same as: python -m nfzoo.train.reproduce
"""
from nfzoo.train.reproduce import main

if __name__ == "__main__":
    main()
