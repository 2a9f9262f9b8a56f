"""Tables (Markdown) and plots (PNG) of the reproduction's results, from the rows of its CSVs."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from nfzoo.atomic_files import atomic_open

from .experiments import EVERY_BATCH

__all__ = ["norm_table", "agc_table", "plot_norms", "plot_agc", "mean_std"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _errors(rows: list[dict]) -> list[float]:
    return [float(r["test_error"]) for r in rows if r["diverged"] != "True"]


def norm_errors(rows: list[dict], norm: str, micro_batch: int) -> list[float]:
    """The test errors of ``norm`` at ``micro_batch``, one per seed (a batch-independent norm's
    runs stand for every micro-batch)."""
    groups = _by(rows, "norm", "micro_batch")
    return _errors(groups.get((norm, str(micro_batch)), []) or groups.get((norm, EVERY_BATCH), []))


def norm_table(rows: list[dict], norms: tuple[str, ...], micro_batches: tuple[int, ...]) -> str:
    """Test error (%) mean ± std over seeds, one row per norm, one column per micro-batch, largest
    first, and the change from the largest to the smallest. A batch-independent norm's cells (in
    italics) all come from the same runs."""
    big, small = max(micro_batches), min(micro_batches)
    columns = sorted(micro_batches, reverse=True)
    lines = ["| norm | " + " | ".join(f"{b} / GPU" for b in columns) + f" | {small} minus {big} |",
             "|---|" + "---|" * (len(columns) + 1)]
    independent = {r["norm"] for r in rows if r["micro_batch"] == EVERY_BATCH}
    for norm in norms:
        stats = {b: mean_std(norm_errors(rows, norm, b)) for b in columns}
        style = "*{}*" if norm in independent else "{}"
        cells = [style.format(f"{m:.2f} ± {s:.2f}") if not math.isnan(m) else "" for m, s in stats.values()]
        gap = stats[small][0] - stats[big][0]
        gap_cell = "0 (exact)" if norm in independent else ("" if math.isnan(gap) else f"{gap:+.2f}")
        lines.append(f"| {norm} | " + " | ".join(cells) + f" | {gap_cell} |")
    return "\n".join(lines)


LEARNED = 50.0  # test error (%) below which a run counts as having learned (chance: 90)


def _agc_order(cell: tuple[str, str, str, str]) -> tuple:
    batch, base_lr, model, clip = cell
    return int(batch), float(base_lr), model != "bn", -1.0 if clip == "none" else float(clip)


def agc_table(rows: list[dict]) -> str:
    """One line per (batch, learning rate, model, clip): divergences, test error mean ± std over the
    seeds that did not diverge, final training loss; then the best clip per batch and rate among
    the NF runs that learned (no divergence, error below :data:`LEARNED`)."""
    lines = ["| batch | lr | model | AGC clip | diverged | test error (%) | final train loss |",
             "|---|---|---|---|---|---|---|"]
    best: dict[tuple[str, float], tuple[str, float]] = {}
    cells = _by(rows, "batch", "base_lr", "model", "clip")
    for (batch, base_lr, model, clip) in sorted(cells, key=_agc_order):
        rs = cells[(batch, base_lr, model, clip)]
        lr = float(base_lr) * int(batch) / 256
        diverged = sum(r["diverged"] == "True" for r in rs)
        m, s = mean_std(_errors(rs))
        loss = ", ".join(r["final_train_loss"] for r in rs)
        lines.append(f"| {batch} | {lr:g} | {model} | {clip} | {diverged}/{len(rs)} | "
                     f"{'all diverged' if math.isnan(m) else f'{m:.2f} ± {s:.2f}'} | {loss} |")
        best.setdefault((batch, lr), ("no run learned", math.inf))
        if model == "nf" and not diverged and m < min(LEARNED, best[(batch, lr)][1]):
            best[(batch, lr)] = (clip, m)
    lines += ["", f"| batch | lr | best NF clip (lowest mean error; runs that did not diverge and reached < {LEARNED:g} %) |",
              "|---|---|---|"]
    lines += [f"| {batch} | {lr:g} | {clip}" + ("" if math.isinf(m) else f" ({m:.2f} %)") + " |"
              for (batch, lr), (clip, m) in best.items()]
    return "\n".join(lines)


def _save(fig, path: Path, dpi: int) -> None:
    """Write ``fig`` as a PNG atomically, then free it."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    _pyplot().close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_norms(rows: list[dict], norms: tuple[str, ...], micro_batches: tuple[int, ...], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted(micro_batches, reverse=True)
    for norm in norms:
        stats = [mean_std(norm_errors(rows, norm, b)) for b in xs]
        ax.errorbar(range(len(xs)), [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                    label=norm)
    ax.set_xticks(range(len(xs)), [str(b) for b in xs])
    ax.set_xlabel("images per GPU (per normalization batch)")
    ax.set_ylabel("test error (%), mean ± std over seeds")
    ax.set_title("Fashion-MNIST: error vs. images per GPU")
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def plot_agc(rows: list[dict], path: Path) -> None:
    """Training-loss curves of the first seed, one panel per (batch, learning rate)."""
    plt = _pyplot()
    cells = sorted({(int(r["batch"]), float(r["base_lr"])) for r in rows})
    batches, lrs = sorted({b for b, _ in cells}), sorted({lr for _, lr in cells})
    curves = list(dict.fromkeys((r["model"], r["clip"]) for r in rows))
    first_seed = min(r["seed"] for r in rows)
    fig, axes = plt.subplots(len(batches), len(lrs), figsize=(5 * len(lrs), 3.6 * len(batches)), squeeze=False,
                             sharey=True)
    for r in (r for r in rows if r["seed"] == first_seed):
        ax = axes[batches.index(int(r["batch"]))][lrs.index(float(r["base_lr"]))]
        losses = [float(v) for v in r["losses"].split()]
        label = "BN twin" if r["model"] == "bn" else f"NF, AGC clip {r['clip']}"
        ax.plot(range(1, len(losses) + 1), losses, color=f"C{curves.index((r['model'], r['clip']))}", label=label,
                linestyle="--" if r["model"] == "bn" else "-")
    for (batch, base_lr) in cells:
        ax = axes[batches.index(batch)][lrs.index(base_lr)]
        ax.set_title(f"batch {batch}, lr {base_lr * batch / 256:g}")
        ax.set_xlabel("logged step (about 1 % of training each)")
        ax.set_ylim(0, 3)
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("training loss (a NaN ends a curve)")
    fig.tight_layout()
    _save(fig, path, dpi=110)
