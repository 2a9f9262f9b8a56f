"""Publishing zoo weights as a Hugging Face Hub repository that timm and transformers load.

:func:`write_repo` writes the repository folder with timm's own ``save_for_hf`` (weights as
``model.safetensors`` and ``config.json`` in timm's schema), adjusts the config so that every
client reads it the same way (:func:`hub_config`), and adds a ``README.md`` model card drawn from
the manifest entry of the tag (:func:`model_card`). The weights are first loaded strictly into
the model through nfzoo's normal pretrained path, so a folder that would not load is never
written. The folder appears in one step, with the usual permissions.

:func:`upload` pushes that folder with ``huggingface_hub``. timm's ``push_to_hf_hub`` is not
used: it writes the model again with its own, generic card and the config that transformers
refuses (see :func:`hub_config`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub import HfApi

from ..atomic_files import atomic_dir
from .convert import RECORD_FILE, WEIGHTS_FILE
from .files import sha256_file
from .manifest import Checkpoint, checkpoint, paper

__all__ = ["Measured", "Provenance", "write_repo", "upload", "model_card", "hub_config", "provenance",
           "NFZOO_REQUIREMENT"]

NFZOO_REQUIREMENT = "pip install nfzoo, then `import nfzoo` before loading: nfzoo registers this architecture with timm"

# How the weights of each source format came to be, for the card of a verified file.
_ORIGIN = {
    "haiku-pickle": "released by the paper's authors (DeepMind) and converted to nfzoo's layout by `weights/convert.py`",
    "ws-pth": "released by the paper's authors and converted to nfzoo's layout by `weights/convert.py`",
    "openmmlab": "released by the paper's authors (OpenMMLab's mirror) and converted to nfzoo's layout by "
                 "`weights/convert.py`",
    "nfzoo-trained": "trained by nfzoo's own recipe",
}


@dataclass(frozen=True)
class Measured:
    """Accuracy measured on the published weights (%), and how."""
    top1: float
    top5: float
    setup: str  # e.g. "nfzoo eval harness, 256 px, H100, bf16"


@dataclass(frozen=True)
class Provenance:
    """Whether a weights file is the tag's verified file, and why (or why not)."""
    verified: bool
    sha256: str
    reason: str


def provenance(entry: Checkpoint, weights: Path, record: dict | None) -> Provenance:
    """Is ``weights`` the verified file of ``entry``?

    Verified means: the manifest records the file's full sha256 and it matches (the shipped,
    trained checkpoints), or the conversion record written by ``weights/convert.py`` for this
    tag lies next to it and names this very file (same sha256); convert.py checked the source
    against the manifest's digests before writing it. Anything else (random weights, a file
    from elsewhere, a record of another tag) is unverified.
    """
    sha = sha256_file(weights)
    if entry.file:  # shipped in the package: the manifest records its sha256
        ok = sha == entry.sha256
        return Provenance(ok, sha, "sha256 matches the manifest" if ok else
                          f"sha256 differs from the manifest's {entry.sha256 or '(none recorded)'}")
    if record is None:
        return Provenance(False, sha, f"no conversion record ({RECORD_FILE}) from weights/convert.py lies next to it")
    if record.get("name") != entry.name:
        return Provenance(False, sha, f"its conversion record is for {record.get('name')!r}, not {entry.name}")
    if record.get("sha256") != sha:
        return Provenance(False, sha, f"sha256 differs from the one its conversion produced ({record.get('sha256')})")
    return Provenance(True, sha, "the conversion record of weights/convert.py names this file")


def write_repo(
        weights_dir: str | os.PathLike,
        name: str,
        out_dir: str | os.PathLike,
        measured: Measured | None = None,
) -> Path:
    """Write the Hub repository folder for ``weights_dir/model.safetensors``.

    ``name`` is the manifest tag (``"nfnet_f0.dm_in1k"``). The folder is written next to
    ``out_dir`` and moved into place in one step; an existing ``out_dir`` is replaced.
    """
    import nfzoo  # noqa: F401  (registers the zoo's models with timm)

    entry = checkpoint(name)
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    weights = weights_dir / WEIGHTS_FILE
    record_path = weights_dir / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    origin = provenance(entry, weights, record)

    with atomic_dir(out_dir) as tmp:  # appears whole, with the usual permissions, or not at all
        timm.models.save_for_hf(model, tmp, safe_serialization=True)
        config_path = tmp / "config.json"
        config_path.write_text(json.dumps(hub_config(json.loads(config_path.read_text()), entry), indent=2) + "\n")
        card = model_card(entry, origin, measured, num_params=sum(p.numel() for p in model.parameters()),
                          published_sha256=sha256_file(tmp / WEIGHTS_FILE))
        (tmp / "README.md").write_text(card)
    return out_dir


def hub_config(config: dict, entry: Checkpoint) -> dict:
    """timm's ``config.json`` made readable the same way by every client.

    * ``model_args`` loses ``num_classes``: the root ``num_classes`` says it, and transformers'
      TimmWrapper passes its own ``num_classes`` next to ``**model_args`` (a second one is a
      TypeError).
    * ``pretrained_cfg`` gives the *evaluation* preprocessing as the input size: clients that
      read only ``input_size``/``crop_pct`` (transformers' image processor, timm's
      ``resolve_data_config`` without ``use_test_size``) then evaluate as the source did.
    * ``nfzoo`` says what the architecture needs, for a reader without nfzoo.
    """
    config = json.loads(json.dumps(config))  # a deep copy
    config.get("model_args", {}).pop("num_classes", None)
    cfg = config["pretrained_cfg"]
    test = cfg.pop("test_input_size", None) or cfg["input_size"]
    cfg["input_size"] = [test[0], entry.test_size, entry.test_size]
    cfg.pop("pool_size", None)  # the pool size belongs to the training size
    cfg.pop("test_crop_pct", None)
    cfg.update(crop_pct=entry.crop_pct, crop_mode=entry.crop_mode, interpolation=entry.interpolation)
    config["nfzoo"] = {"requires": NFZOO_REQUIREMENT, "tag": entry.name}
    return config


def _percent(value: float | None) -> str:
    return "not published" if value is None else f"{value:.2f}"


def model_card(entry: Checkpoint, origin: Provenance, measured: Measured | None, num_params: int,
               published_sha256: str) -> str:
    """The README.md of the Hub repository. Provenance and expected accuracy come from the
    manifest entry, and only for its verified file (:func:`provenance`); any other file gets a
    card that says it is not that file and states neither."""
    cite = paper(entry.paper)
    license_ = entry.license if entry.license != "unspecified" else "other"
    measured_row = (f"| measured ({measured.setup}) | {measured.top1:.2f} | {measured.top5:.2f} |"
                    if measured else "| measured | not yet measured | |")
    if origin.verified:
        source = (f"- Trained by: `python {entry.source_url}`" if entry.source_format == "nfzoo-trained" else
                  f"- Source: {entry.source_url} ({entry.source_format}), "
                  f"sha256 `{entry.source_sha256 or 'not recorded'}`")
        about = (f"{cite.title} ({entry.paper}): {entry.dataset} weights {_ORIGIN[entry.source_format]}, "
                 f"in the layout of nfzoo (a timm plugin).\n\n{source}\n"
                 f"- Verified: {origin.reason} (sha256 `{origin.sha256}`)")
        expected_row = (f"| expected ({entry.accuracy_source or 'no published figure'}) | {_percent(entry.top1)} "
                        f"| {_percent(entry.top5)} |\n")
        license_note = ("" if entry.license != "unspecified" else
                        "\nThe authors released these weights without stating a license; check with them "
                        "before any use beyond research.\n")
    else:
        about = (f"**These weights are not the verified {entry.name} file**: {origin.reason} "
                 f"(sha256 `{origin.sha256}`). They have the architecture of {entry.model} (nfzoo, a timm "
                 f"plugin), but nothing is known here of where they come from or how well they do: the "
                 f"source's provenance and published accuracy do not apply to them.")
        expected_row, license_note = "", ""
    return f"""---
tags:
- image-classification
- timm
- nfzoo
library_name: timm
license: {license_}
datasets:
- {entry.dataset}
---
# {entry.name}

{about}

- Parameters: {num_params / 1e6:.2f} M
- Evaluation: {entry.test_size} px, {entry.crop_mode} crop {entry.crop_pct}, {entry.interpolation} interpolation
- `model.safetensors` sha256: `{published_sha256}`
- License: {entry.license}
{license_note}
## {entry.dataset} validation accuracy

| | top-1 (%) | top-5 (%) |
|---|---|---|
{expected_row}{measured_row}

## Usage

The architecture is nfzoo's: `pip install nfzoo` and `import nfzoo` before loading. Without it,
timm and transformers stop with "Unknown model (nfzoo_...)" rather than build another network.

```python
import timm
import nfzoo  # registers nfzoo's models with timm

model = timm.create_model("hf-hub:{entry.publish_repo}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)  # the evaluation preprocessing
transform = timm.data.create_transform(**cfg)
```

transformers (`AutoModelForImageClassification.from_pretrained("{entry.publish_repo}")`, after
`import nfzoo`) and its image processor read the same evaluation preprocessing from
`config.json`.

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
