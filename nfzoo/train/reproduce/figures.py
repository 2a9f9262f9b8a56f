"""Tables (Markdown) and plots (PNG) of the reproduction's results."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

__all__ = ["norm_table", "agc_table", "plot_norms", "plot_agc"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def norm_table(rows: list[dict], norms: tuple[str, ...], micro_batches: tuple[int, ...]) -> str:
    """Test error (%) mean ± std over seeds, one row per norm, one column per micro-batch."""
    groups = _by(rows, "norm", "micro_batch")
    lines = ["| norm | " + " | ".join(f"batch {b}" for b in micro_batches) + " | 2 minus 64 |",
             "|---|" + "---|" * (len(micro_batches) + 1)]
    for norm in norms:
        cells, means = [], {}
        for b in micro_batches:
            errs = [float(r["test_error"]) for r in groups.get((norm, str(b)), [])]
            if not errs:
                cells.append("")
                continue
            means[b], std = _mean_std(errs)
            cells.append(f"{means[b]:.1f} ± {std:.1f}")
        gap = f"{means[min(micro_batches)] - means[max(micro_batches)]:+.1f}" if len(means) == len(micro_batches) else ""
        lines.append(f"| {norm} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


def agc_table(rows: list[dict]) -> str:
    groups = _by(rows, "lr", "clip")
    lines = ["| lr | AGC clip | diverged (seeds) | final train loss | test error (%) |", "|---|---|---|---|---|"]
    for (lr, clip), rs in groups.items():
        div = sum(r["diverged"] == "True" for r in rs)
        loss = ", ".join(r["final_train_loss"] for r in rs)
        err = ", ".join(r["test_error"] for r in rs)
        lines.append(f"| {lr} | {clip} | {div}/{len(rs)} | {loss} | {err} |")
    return "\n".join(lines)


def plot_norms(rows: list[dict], norms: tuple[str, ...], micro_batches: tuple[int, ...], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by(rows, "norm", "micro_batch")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted(micro_batches, reverse=True)
    for norm in norms:
        stats = [_mean_std([float(r["test_error"]) for r in groups.get((norm, str(b)), [])] or [float("nan")]) for b in xs]
        ax.errorbar(range(len(xs)), [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=norm)
    ax.set_xticks(range(len(xs)), [str(b) for b in xs])
    ax.set_xlabel("images per normalization batch (per GPU)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Fashion-MNIST, ResNet-8: error vs. batch")
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_agc(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in rows}, key=float)
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    first_seed = rows[0]["seed"]
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), squeeze=False, sharey=True)
    for ax, lr in zip(axes[0], lrs):
        for r in (r for r in rows if r["lr"] == lr):
            losses = [float(v) for v in r["losses"].split()]
            ax.plot(range(1, len(losses) + 1), losses, color=f"C{clips.index(r['clip'])}", alpha=0.8,
                    label=f"AGC clip {r['clip']}" if r["seed"] == first_seed else None)
        ax.set_title(f"NF-ResNet, lr {lr}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 5)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training loss (NaN ends a curve)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
