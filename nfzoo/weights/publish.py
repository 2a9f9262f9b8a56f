"""Publishing converted weights as a Hugging Face Hub repository that timm loads.

:func:`write_repo` writes the repository folder: ``model.safetensors``, ``config.json`` in
timm's schema (written by timm's own ``save_config_for_hf``, so ``hf-hub:`` names read it) and
a ``README.md`` model card. Before writing, the weights are loaded strictly into the model
through nfzoo's normal pretrained path, so a folder that would not load is never written.
:func:`upload` pushes the folder with ``huggingface_hub`` (token from ``HF_TOKEN`` or the
stored login).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub import HfApi
from timm.models._hub import save_config_for_hf

from ..atomic_files import atomic_dir
from .convert import RECORD_FILE, WEIGHTS_FILE
from .files import sha256_file
from .manifest import Checkpoint, checkpoint, paper

__all__ = ["Measured", "write_repo", "upload", "model_card"]


@dataclass(frozen=True)
class Measured:
    """Accuracy measured on the converted weights (ImageNet-1k val, %), and how."""
    top1: float
    top5: float
    setup: str  # e.g. "nfzoo eval harness, 256 px, H100, bf16"


def write_repo(
        weights_dir: str | os.PathLike,
        name: str,
        out_dir: str | os.PathLike,
        measured: Measured | None = None,
) -> Path:
    """Write the Hub repository folder for the converted weights in ``weights_dir``.

    ``name`` is the manifest tag (``"nfnet_f0.dm_in1k"``). The folder is written next to
    ``out_dir`` and moved into place in one step; an existing ``out_dir`` is replaced.
    """
    import nfzoo  # noqa: F401  (registers the zoo's models with timm)

    entry = checkpoint(name)
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    weights = weights_dir / WEIGHTS_FILE
    record = _record(weights_dir)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))

    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        save_config_for_hf(model, tmp / "config.json")
        card = model_card(entry, record, measured, num_params=sum(p.numel() for p in model.parameters()))
        (tmp / "README.md").write_text(card)
    return out_dir


def _record(weights_dir: Path) -> dict:
    """The conversion record, or the facts a card needs when the weights were not converted here."""
    path = weights_dir / RECORD_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"sha256": sha256_file(weights_dir / WEIGHTS_FILE)}


def _percent(value: float | None) -> str:
    return "not published" if value is None else f"{value:.2f}"


def model_card(entry: Checkpoint, record: dict, measured: Measured | None, num_params: int) -> str:
    """The README.md of the Hub repository: source, license, citation, accuracy, usage."""
    cite = paper(entry.paper)
    license_ = entry.license if entry.license != "unspecified" else "other"
    measured_rows = (f"| measured ({measured.setup}) | {measured.top1:.2f} | {measured.top5:.2f} |"
                     if measured else "| measured | not yet measured | |")
    source_sha = record.get("source_sha256") or entry.source_sha256 or "not recorded"
    license_note = ("" if entry.license != "unspecified" else
                    "\nThe authors released these weights without stating a license; check with them "
                    "before any use beyond research.\n")
    return f"""---
tags:
- image-classification
- timm
- nfzoo
library_name: timm
license: {license_}
datasets:
- imagenet-1k
---
# {entry.name}

{cite.title} ({entry.paper}): ImageNet-1k weights released by the paper's authors, converted to
safetensors in the layout of nfzoo (a timm plugin).

- Parameters: {num_params / 1e6:.2f} M
- Evaluation: {entry.test_size} px, center crop {entry.crop_pct}, {entry.interpolation} interpolation
- Source: {entry.source_url} ({entry.source_format}), sha256 `{source_sha}`
- `model.safetensors` sha256: `{record["sha256"]}`
- License: {entry.license}
{license_note}
## ImageNet-1k validation accuracy

| | top-1 (%) | top-5 (%) |
|---|---|---|
| expected ({entry.accuracy_source or "no published figure"}) | {_percent(entry.top1)} | {_percent(entry.top5)} |
{measured_rows}

## Usage

```python
import timm
import nfzoo  # registers nfzoo's models with timm

model = timm.create_model("hf-hub:{entry.publish_repo}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**cfg)
```

## Citation

```bibtex
{cite.bibtex}
```
"""


def upload(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Add weights (nfzoo)")
    return info.commit_url
