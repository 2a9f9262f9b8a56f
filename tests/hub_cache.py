"""Test helper: put files into an offline Hugging Face cache in the Hub's own layout."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """``models--org--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<name> -> blob}``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        blob = repo / "blobs" / hashlib.sha256(Path(src).read_bytes()).hexdigest()
        shutil.copyfile(src, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot
