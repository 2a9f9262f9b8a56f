"""The run's metrics log: one JSON object per line, flushed as it is written."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import atomic_open

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Appends records (dicts with a ``step``) to a JSONL file; only the main process writes."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop the records logged after ``step`` (a resumed run logs them again), atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
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
