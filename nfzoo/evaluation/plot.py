"""Top-1 against throughput for every validated model, like the NFNet paper's
accuracy-vs-speed figure. ``python -m nfzoo.evaluation.plot results.json [...] -o plot.png``
combines the rows of several runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .input_error import EvaluationError
from ..atomic_files import atomic_open
from .results import read_results

__all__ = ["plot_accuracy_vs_throughput"]


def plot_accuracy_vs_throughput(rows: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG scatter of top-1 (%) against images/s (log scale), one labelled point per row."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvaluationError("plotting needs matplotlib (pip install 'nfzoo[plot]')") from None
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        label = f"{r['model']}.{r['tag']}" if r.get("tag") else r["model"]
        ax.scatter(r["img_per_sec"], r["top1"])
        ax.annotate(label, (r["img_per_sec"], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    devices = sorted({f"{r['device']}, {r['precision']}" for r in rows})
    ax.set_xscale("log")
    ax.set_xlabel("images / s")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(f"top-1 vs throughput ({'; '.join(devices)})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results files (.json or .csv) of nfzoo-validate")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        plot_accuracy_vs_throughput([r for p in args.results for r in read_results(p)], args.output)
    except EvaluationError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
