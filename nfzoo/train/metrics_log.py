"""The run's metrics log: one JSON object per line, flushed as it is written."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic_files import atomic_open

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Appends records (dicts with a ``step``) to a JSONL file; only the main process writes."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.records = 0  # records in the file: those kept at the start plus those written since

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
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
