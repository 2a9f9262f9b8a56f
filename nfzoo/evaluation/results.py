"""Result rows, the --check comparison, and the text of results files (JSON or CSV; written by the CLI
with the plot, atomically)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import EvaluationError

__all__ = ["FIELDS", "DEFAULT_TOLERANCE", "check_row", "format_results", "read_results", "format_table"]

FIELDS = (
    "model", "tag", "weights", "top1", "top5", "expected_top1", "expected_top5", "delta_top1", "delta_top5",
    "check", "real_top1", "real_top5", "images", "bad_images", "img_per_sec", "device", "processes",
    "precision", "channels_last", "compiled", "fused", "batch_size", "img_size", "crop_pct", "crop_mode",
    "interpolation", "params_m", "gmacs", "data",
)
# Published accuracies are quoted to 0.1 %, and PyTorch's resize differs slightly from the
# resize each source evaluated with: a reproduction within 0.3 points (top-1 and top-5) passes.
DEFAULT_TOLERANCE = 0.3
SUFFIXES = (".json", ".csv")


def check_row(row: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether measured top-1 and top-5 are both within ``tolerance`` points of the expected."""
    return abs(row["delta_top1"]) <= tolerance and abs(row["delta_top5"]) <= tolerance


def check_suffix(path: Path) -> None:
    if Path(path).suffix not in SUFFIXES:
        raise EvaluationError(f"results file {path} must end in .json or .csv")


def format_results(rows: list[dict[str, Any]], path: Path) -> str:
    """The text of a results file: JSON or CSV, by ``path``'s suffix."""
    check_suffix(path)
    if Path(path).suffix == ".json":
        return json.dumps(rows, indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file of nfzoo-validate."""
    check_suffix(path)
    try:
        text = Path(path).read_text()
        if Path(path).suffix == ".json":
            rows = json.loads(text)
        else:
            kinds = {"top1": float, "top5": float, "expected_top1": float, "img_per_sec": float, "params_m": float,
                     "gmacs": float, "images": int}
            rows = [{k: kinds.get(k, str)(v) if v else None for k, v in r.items()}
                    for r in csv.DictReader(io.StringIO(text))]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise EvaluationError(f"cannot read results file {path}: {getattr(e, 'strerror', None) or e}") from None
    needed = {"model", "top1", "img_per_sec", "data", "images"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and needed <= set(r) for r in rows):
        raise EvaluationError(f"{path} is not a results file of nfzoo-validate (rows with {', '.join(sorted(needed))})")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A short human-readable summary."""
    cols = ("model", "tag", "weights", "top1", "top5", "expected_top1", "delta_top1", "check", "images", "img_per_sec")
    cells = [[("" if r.get(c) is None else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
