"""Top-1 against throughput for every validated model, like the NFNet paper's
accuracy-vs-speed figure. ``python -m nfzoo.evaluation.plot results.json [...] -o plot.png``
combines the rows of several runs.

Each model is a filled point at its measured top-1; where the manifest records the accuracy of
its weights (``expected_top1``), a hollow point at the same images/s marks that reference. The
y axis names the data the top-1 was measured on.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any, Sequence

from ..atomic_files import write_atomic
from ..cli import ArgumentParser, existing_file, run_cli
from ..errors import EvaluationError
from .results import read_results

__all__ = ["accuracy_figure", "render_plot", "plot_accuracy_vs_throughput", "main"]

PROG = "python -m nfzoo.evaluation.plot"


def _data_label(rows: list[dict[str, Any]]) -> str:
    """The data the rows were measured on, without the description's notes (after ';')."""
    data = sorted({f"{str(r['data']).split(';')[0]} ({r['images']} images)" for r in rows})
    return textwrap.fill(f"top-1 (%) on {', '.join(data)}", 70)


def accuracy_figure(rows: list[dict[str, Any]]):
    """A matplotlib figure: top-1 (%) against images/s (log scale), one labelled point per row."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvaluationError("plotting needs matplotlib (pip install 'nfzoo[plot]')") from None
    fig, ax = plt.subplots(figsize=(7, 5))
    references = 0
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        label = f"{r['model']}.{r['tag']}" if r.get("tag") else r["model"]
        ax.scatter(r["img_per_sec"], r["top1"], color=color, label="measured" if i == 0 else None)
        ax.annotate(label, (r["img_per_sec"], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if r.get("expected_top1") is not None:
            ax.scatter(r["img_per_sec"], r["expected_top1"], s=90, facecolors="none", edgecolors=color,
                       label=None if references else "recorded in the nfzoo manifest")
            references += 1
            ax.plot([r["img_per_sec"]] * 2, [r["top1"], r["expected_top1"]], ":", color=color, linewidth=1)
    devices = sorted({f"{r['device']}, {r['precision']}" for r in rows})
    ax.set_xscale("log")
    ax.set_xlabel("images / s")
    ax.set_ylabel(_data_label(rows), fontsize=9)
    ax.set_title(f"top-1 vs throughput ({'; '.join(devices)})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def render_plot(rows: list[dict[str, Any]]) -> bytes:
    """:func:`accuracy_figure` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(rows)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def plot_accuracy_vs_throughput(rows: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`render_plot` of ``rows`` to ``path``, atomically."""
    write_atomic(path, render_plot(rows))


def _run(argv: Sequence[str] | None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=existing_file, help="results files (.json or .csv) of nfzoo-validate")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.output.suffix != ".png":
        raise EvaluationError(f"--output {args.output} must end in .png")
    plot_accuracy_vs_throughput([r for p in args.results for r in read_results(p)], args.output)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
