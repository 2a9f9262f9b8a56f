"""The run's metrics log (one JSON object per line) and its plot (loss, accuracy, learning rate)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic_files import append_atomic, atomic_open, atomic_path

__all__ = ["MetricsLog", "read_metrics", "MetricsPlot"]


class MetricsLog:
    """Appends records (dicts with a ``step``) to a JSONL file; only the main process writes."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.records = 0  # records in the file: those kept at the start plus those written since

    def write(self, record: dict) -> None:
        """Append ``record`` as one line, whole or not at all (a full disk leaves the log as it was)."""
        if not self.enabled:
            return
        append_atomic(self.path, json.dumps(record) + "\n")
        self.records += 1

    def keep_first(self, count: int) -> None:
        """Keep only the first ``count`` records (those a checkpoint counted), atomically: a
        resumed run logs the later ones again, so they must not stay twice."""
        self.records = count
        if not self.enabled or not self.path.is_file():
            return
        kept = read_metrics(self.path)[:count]
        with atomic_open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics log, skipping a last line cut short by a kill."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsPlot:
    """Draws a metrics log as a PNG: training (and evaluation) loss, evaluation top-1 and the
    learning rate against the epoch, written atomically. Needs matplotlib (the ``plot`` extra);
    without it :meth:`draw` does nothing and :attr:`unavailable` says why."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            from matplotlib.figure import Figure
        except ImportError:
            self._figure = None
            self.unavailable = (f"matplotlib is not installed, so no {self.path.name} is drawn "
                                "(pip install 'nfzoo[plot]')")
        else:
            self._figure = Figure
            self.unavailable = None

    def draw(self, records: list[dict]) -> None:
        if self._figure is None:
            return
        fig = self._figure(figsize=(12, 3.6), layout="tight")
        loss, top1, lr = fig.subplots(1, 3)
        for ax, keys, title in ((loss, ("train_loss", "eval_loss", "ema_eval_loss"), "loss"),
                                (top1, ("eval_top1", "ema_eval_top1"), "top-1 (%)"),
                                (lr, ("lr",), "learning rate")):
            for key in keys:
                points = [(r["epoch"], r[key]) for r in records if key in r]
                if points:
                    ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=key)
            ax.set(title=title, xlabel="epoch")
            if ax.lines:
                ax.legend(fontsize="small")
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
