"""The small-scale reproduction of the papers' central claims on Fashion-MNIST, beside the
library: ``python -m reproduction`` from the repository root (docs/reproduction.md). It builds
on nfzoo's public API: its norms, its NF-ResNet block and its training recipe."""
