"""Publishing zoo weights as a Hugging Face Hub repository that timm and transformers load.

:func:`write_repo` writes the repository folder as timm's own ``save_for_hf`` would (weights as
``model.safetensors``, ``config.json`` in timm's schema), adjusts the config so that every
client reads it the same way (:func:`hub_config`), and adds a ``README.md`` model card drawn from
the manifest entry of the tag (:func:`model_card`). The weights are first loaded strictly into
the model through nfzoo's normal pretrained path, so a folder that would not load is never
written. :func:`write_trained_repo` does the same for a checkpoint of ``python -m nfzoo.train``
(a user's own model): the class count, input channels, class names and preprocessing come from
its ``model_config``, the card from the run and the accuracy measured on it. The files are written by Python (a full disk is a :class:`~nfzoo.atomic_files.DiskFullError`)
into a new temporary folder and put in place by :func:`~nfzoo.atomic_files.atomic_dir`, which
never deletes or replaces anything but these files (:data:`REPO_FILES`).

:func:`upload` pushes those files with ``huggingface_hub``. timm's ``push_to_hf_hub`` is not
used: it writes the model again with its own, generic card and the config that transformers
refuses (see :func:`hub_config`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi

from ..atomic_files import atomic_dir, check_output_dir
from ..errors import NfzooError
from ..timm_private import save_config_for_hf
from .convert import RECORD_FILE, WEIGHTS_FILE
from .files import sha256_file
from .manifest import Checkpoint, checkpoint, paper

__all__ = ["Measured", "Provenance", "PublishError", "write_repo", "write_trained_repo", "measured_from_results",
           "upload", "model_card", "trained_model_card", "hub_config", "provenance", "NFZOO_INSTALL",
           "NFZOO_REQUIREMENT", "REPO_FILES", "PUBLISHED_PREFIX", "published_name"]

# What the published folder holds: the only files write_repo writes or replaces, and upload sends.
REPO_FILES = (WEIGHTS_FILE, "config.json", "README.md")

NFZOO_INSTALL = ("clone the nfzoo repository and run `pip install .` in it, or `pip install git+<its URL>` "
                 "(nfzoo is not on PyPI)")
NFZOO_REQUIREMENT = (f"To install nfzoo, {NFZOO_INSTALL}; then `import nfzoo` before timm or transformers loads "
                     "this model: nfzoo registers its architecture with timm")

# What a zoo model's name becomes in its pretrained cfg and in a Hub config.json (see published_name).
PUBLISHED_PREFIX = "nfzoo_"


def published_name(name: str) -> str:
    """The architecture name a zoo model states in its pretrained cfg and Hub ``config.json``:
    ``nfzoo_<name>``, which plain timm (without ``import nfzoo``) does not know, so that it stops
    with "Unknown model" instead of building its own, different model of the zoo's name."""
    return name if name.startswith(PUBLISHED_PREFIX) else PUBLISHED_PREFIX + name


# How the weights of each source format came to be, for the card of a verified file.
_ORIGIN = {
    "haiku-pickle": "released by the paper's authors (DeepMind) and converted to nfzoo's layout by `weights/convert.py`",
    "ws-pth": "released by the paper's authors and converted to nfzoo's layout by `weights/convert.py`",
    "openmmlab": "released by the paper's authors (OpenMMLab's mirror) and converted to nfzoo's layout by "
                 "`weights/convert.py`",
    "nfzoo-trained": "trained by nfzoo's own recipe",
}


class PublishError(NfzooError, ValueError):
    """What to publish is not usable: no weights file, or measured accuracies that cannot be."""


@dataclass(frozen=True)
class Measured:
    """Accuracy measured on the published weights (%), and how."""
    top1: float
    top5: float
    setup: str  # e.g. "nfzoo eval harness, 256 px, H100, bf16"

    def __post_init__(self):
        if not 0 <= self.top1 <= self.top5 <= 100:
            raise PublishError(f"measured top-1 {self.top1} and top-5 {self.top5} must be percentages with "
                               "0 <= top-1 <= top-5 <= 100")
        if not self.setup.strip():
            raise PublishError("the measured accuracy needs its setup (how it was measured), e.g. "
                               '"nfzoo eval harness, 256 px, H100"')


@dataclass(frozen=True)
class Provenance:
    """Whether a weights file is the tag's verified file, why (or why not), and the source file
    it was verified against (``source``: its location and digests, for the card)."""
    verified: bool
    reason: str
    source: str | None = None


def _source_match(entry: Checkpoint, record: dict) -> tuple[str | None, str]:
    """``(source line, reason)``: the source line when the record's digest of the source matches
    the digest the manifest records for it, else None and why not."""
    if entry.source_digest is None:
        return None, (f"the nfzoo manifest records no digest of the source file of {entry.name}, so the file "
                      "converted cannot be told from any other")
    algorithm, expected = entry.source_digest
    found = str(record.get(f"source_{algorithm}") or "")
    if not found or not found.startswith(expected):
        return None, (f"the {algorithm} of the file converted ({found or 'not recorded'}) is not the one the nfzoo "
                      f"manifest records for the source of {entry.name} ({expected})")
    match = (f"the source file's {algorithm} matches the nfzoo manifest's" if len(expected) == len(found) else
             f"the source file's {algorithm} starts with {expected}, the prefix the nfzoo manifest records")
    digests = f"sha256 `{record.get('source_sha256')}`" + (f", md5 `{found}`" if algorithm == "md5" else "")
    return (f"{entry.source_url} ({entry.source_format}), {digests}",
            f"{match}, and the conversion record of `weights/convert.py` names the converted file")


def provenance(entry: Checkpoint, weights: Path, record: dict | None) -> Provenance:
    """Is ``weights`` the verified file of ``entry``?

    Verified means: the manifest records the file's full sha256 and it matches (the shipped,
    trained checkpoints); or the conversion record written by ``weights/convert.py`` for this
    tag lies next to it, names this very file (same sha256), and records a digest of the
    source that matches the one the manifest records for the source (:attr:`Checkpoint.source_digest`).
    Anything else (random weights, a file from elsewhere, a record of another tag, a source
    that the manifest has no digest for) is unverified.
    """
    sha = sha256_file(weights)
    if entry.file:  # shipped in the package: the manifest records its sha256
        if sha != entry.sha256:
            return Provenance(False, "its sha256 differs from the one the nfzoo manifest records for the shipped file")
        return Provenance(True, "the file's sha256 matches the nfzoo manifest's",
                          f"`{entry.file}`, shipped in nfzoo (trained by `python {entry.source_url}`), sha256 `{sha}`")
    if record is None:
        return Provenance(False, f"no conversion record ({RECORD_FILE}) of weights/convert.py lies next to it, "
                                 "or it is unreadable")
    if record.get("name") != entry.name:
        return Provenance(False, f"its conversion record is for {record.get('name')!r}, not {entry.name}")
    if record.get("sha256") != sha:
        return Provenance(False, "its sha256 differs from the one its conversion produced")
    source, reason = _source_match(entry, record)
    return Provenance(source is not None, reason, source)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: the weights cannot be vouched for
        return None
    return record if isinstance(record, dict) else None


def write_repo(
        weights_dir: str | os.PathLike,
        name: str,
        out_dir: str | os.PathLike,
        measured: Measured | None = None,
        overwrite: bool = False,
) -> Path:
    """Write the Hub repository folder for ``weights_dir/model.safetensors``.

    ``name`` is the manifest tag (``"nfnet_f0.dm_in1k"``). ``out_dir`` must not exist yet, be
    empty, or (with ``overwrite``) only has its :data:`REPO_FILES` replaced, every other file
    in it kept; it may not be a file, nor equal to, inside or above ``weights_dir``
    (:class:`~nfzoo.atomic_files.UnsafeOutputError`, raised before anything is loaded).
    """
    entry = checkpoint(name)
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    weights = weights_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise PublishError(f"{weights_dir} holds no {WEIGHTS_FILE}; give the folder that weights/convert.py wrote")
    check_output_dir(out_dir, overwrite, apart_from=[weights_dir])
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    origin = provenance(entry, weights, _read_record(weights_dir / RECORD_FILE))
    return _write_folder(model, out_dir, overwrite, [weights_dir], lambda config: hub_config(config, entry),
                         lambda num_params, sha: model_card(entry, origin, measured, num_params, sha,
                                                            in_chans=model.pretrained_cfg["input_size"][0]))


def _write_folder(model: torch.nn.Module, out_dir: Path, overwrite: bool, apart_from: list[Path],
                  adjust_config: Callable[[dict], dict], card: Callable[[int, str], str]) -> Path:
    """The :data:`REPO_FILES` of ``model`` in ``out_dir``: its weights and ``config.json`` as timm's
    ``save_for_hf`` writes them, the config after ``adjust_config``, and the card that
    ``card(parameter count, sha256 of the weights file)`` gives."""
    # The bytes save_for_hf writes, serialised in memory and written by Python: safetensors' own
    # writer reports a full disk as a generic error, not an OSError.
    tensors = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    with atomic_dir(out_dir, overwrite, apart_from=apart_from) as tmp:
        config_path = tmp / "config.json"
        save_config_for_hf(model, config_path)
        config = adjust_config(json.loads(config_path.read_text()))
        text = card(sum(p.numel() for p in model.parameters()), hashlib.sha256(tensors).hexdigest())
        for file, data in ((WEIGHTS_FILE, tensors), ("config.json", json.dumps(config, indent=2) + "\n"),
                           ("README.md", text)):
            with open(tmp / file, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
    return out_dir


def write_trained_repo(
        checkpoint_file: str | os.PathLike,
        out_dir: str | os.PathLike,
        repo_id: str,
        measured: Measured | None = None,
        overwrite: bool = False,
) -> Path:
    """Write the Hub repository folder for the ``model`` weights of a checkpoint of
    ``python -m nfzoo.train`` (``runs/x/last.pth``), to be published as ``repo_id``.

    The model is rebuilt from the checkpoint's ``model_config`` and loaded strictly, as
    ``nfzoo-validate --checkpoint`` loads it; ``config.json`` gives its class names (root
    ``label_names``, which timm and transformers read) and the preprocessing its run validated
    with. ``out_dir`` follows :func:`write_repo`'s rules, apart from the checkpoint's folder.
    """
    from ..evaluation.model_setup import create_model  # the one way to build a checkpoint's model
    from ..train.run_state import load_checkpoint, read_model_config

    checkpoint_file, out_dir = Path(checkpoint_file), Path(out_dir)
    check_output_dir(out_dir, overwrite, apart_from=[checkpoint_file.parent])
    contents = load_checkpoint(checkpoint_file)
    config = read_model_config(contents)
    if config is None:
        raise PublishError(f"{checkpoint_file} holds no model_config: publish a checkpoint that "
                           "`python -m nfzoo.train` wrote (its last.pth), or converted release weights with --name")
    model = create_model(config["architecture"], "checkpoint", checkpoint_file, model_config=config)
    flags = contents.get("flags", {})
    run = {"model": flags.get("model", config["architecture"]), "pretrained": bool(flags.get("pretrained")),
           "epochs": contents.get("epoch")}
    return _write_folder(model, out_dir, overwrite, [checkpoint_file.parent],
                         lambda timm_config: hub_config(timm_config),
                         lambda num_params, sha: trained_model_card(repo_id, config, run, measured, num_params, sha))


def measured_from_results(path: str | os.PathLike, architecture: str | None = None) -> Measured:
    """The accuracy of the one row of an ``nfzoo-validate --results-file``, and how and on what
    data it was measured, for the card; ``architecture``: the model the row must be of."""
    from ..evaluation.results import read_results

    rows = read_results(Path(path))
    if len(rows) != 1:
        raise PublishError(f"{path} holds {len(rows)} results; give the results file of one nfzoo-validate run "
                           "of the published weights")
    (row,) = rows
    if architecture is not None and row["model"] != architecture:
        raise PublishError(f"{path} holds the accuracy of a {row['model']}, not of this {architecture}")
    setup = (f"nfzoo-validate on {row['data']} ({row['images']} images), {row.get('img_size')} px, "
             f"{row.get('precision')}, {row.get('device')}")
    return Measured(float(row["top1"]), float(row["top5"]), setup)


def hub_config(config: dict, entry: Checkpoint | None = None) -> dict:
    """timm's ``config.json`` made readable the same way by every client.

    * ``model_args`` loses ``num_classes``: the root ``num_classes`` says it, and transformers'
      TimmWrapper passes its own ``num_classes`` next to ``**model_args`` (a second one is a
      TypeError).
    * ``pretrained_cfg`` gives the *evaluation* preprocessing as the input size: clients that
      read only ``input_size``/``crop_pct`` (transformers' image processor, timm's
      ``resolve_data_config`` without ``use_test_size``) then evaluate as the source did. For a
      manifest ``entry`` it is the entry's; without one (a model of ``nfzoo.train``), the model's
      cfg already holds it, and the cfg's tag (of the weights it started from) is dropped.
    * ``label_names``, the class names, move to the root: transformers reads them there (its
      ``id2label``; without them the classes are ``LABEL_0`` ...), and timm reads them from there
      into ``pretrained_cfg``.
    * ``nfzoo`` says how to install nfzoo and that it must be imported, for a reader without it.
    """
    config = json.loads(json.dumps(config))  # a deep copy
    config.get("model_args", {}).pop("num_classes", None)
    cfg = config["pretrained_cfg"]
    cfg.pop("pool_size", None)  # the pool size belongs to the training size
    if entry is not None:
        test = cfg.pop("test_input_size", None) or cfg["input_size"]
        cfg["input_size"] = [test[0], entry.test_size, entry.test_size]
        cfg.pop("test_crop_pct", None)
        cfg.update(crop_pct=entry.crop_pct, crop_mode=entry.crop_mode, interpolation=entry.interpolation)
    else:  # what the cfg says of the weights the run started from does not apply to its own
        for key in ("tag", "origin_url", "license"):
            cfg.pop(key, None)
    if "label_names" in cfg:
        config["label_names"] = cfg.pop("label_names")
    config["nfzoo"] = {"requires": NFZOO_REQUIREMENT, **({"tag": entry.name} if entry is not None else {})}
    return config


# The card's metadata that every published folder shares (Hub front matter).
_CARD_TAGS = "tags:\n- image-classification\n- timm\n- nfzoo\nlibrary_name: timm\n"


def _measured_row(measured: Measured | None) -> str:
    """The card's accuracy table row of the measured accuracy."""
    return (f"| measured ({measured.setup}) | {measured.top1:.2f} | {measured.top5:.2f} |"
            if measured else "| measured | not yet measured | |")


def _percent(value: float | None) -> str:
    return "not published" if value is None else f"{value:.2f}"


def model_card(entry: Checkpoint, origin: Provenance, measured: Measured | None, num_params: int,
               published_sha256: str, in_chans: int | None = None) -> str:
    """The README.md of the Hub repository. Provenance and expected accuracy come from the
    manifest entry, and only for its verified file (:func:`provenance`); any other file gets a
    card that says its source file could not be verified and states neither. Each file the
    card names has one digest. ``in_chans`` 1 adds how transformers' pipeline gets one channel."""
    cite = paper(entry.paper)
    license_ = entry.license if entry.license != "unspecified" else "other"
    measured_row = _measured_row(measured)
    if origin.verified:
        about = (f"{cite.title} ({entry.paper}): {entry.dataset} weights {_ORIGIN[entry.source_format]}, "
                 f"in the layout of nfzoo (a timm plugin).\n\n- Source file: {origin.source}\n"
                 f"- Verified: {origin.reason}")
        expected_row = (f"| expected ({entry.accuracy_source or 'no published figure'}) | {_percent(entry.top1)} "
                        f"| {_percent(entry.top5)} |\n")
        license_note = ("" if entry.license != "unspecified" else
                        "\nThe authors released these weights without stating a license; check with them "
                        "before any use beyond research.\n")
    else:
        about = (f"**The source file of these weights could not be verified as the {entry.name} release**: "
                 f"{origin.reason}. They have the architecture of {entry.model} (nfzoo, a timm plugin), but "
                 f"nothing is known here of where they come from or how well they do: the source's provenance "
                 f"and published accuracy do not apply to them.")
        expected_row, license_note = "", ""
    return f"""---
{_CARD_TAGS}license: {license_}
datasets:
- {entry.dataset}
---
# {entry.name}

{about}

- Parameters: {num_params / 1e6:.2f} M
- Evaluation: {entry.test_size} px, {entry.crop_mode} crop {entry.crop_pct}, {entry.interpolation} interpolation
- `{WEIGHTS_FILE}` sha256: `{published_sha256}`
- License: {entry.license}
{license_note}
## {entry.dataset} validation accuracy

| | top-1 (%) | top-5 (%) |
|---|---|---|
{expected_row}{measured_row}

{_usage(published_name(entry.model), entry.publish_repo, in_chans)}
## Citation

```bibtex
{cite.bibtex}
```
"""


def _usage(architecture: str, repo: str, in_chans: int | None = None) -> str:
    """The card's Usage section: installing and importing nfzoo, timm, transformers, and for a
    one-channel model (``in_chans`` 1) how transformers' pipeline gets one channel."""
    grayscale = "" if in_chans != 1 else f"""
The model takes one-channel (grayscale) images. transformers' `pipeline("image-classification")`
converts an image file or a PIL image to RGB, which this model refuses (its first conv expects 1
channel); give it the image as an (H, W, 1) array, which the pipeline reads as grayscale:

```python
import numpy as np
from PIL import Image
from transformers import pipeline
import nfzoo

classifier = pipeline("image-classification", model="{repo}")
image = np.asarray(Image.open("image.png").convert("L"))[:, :, None]
print(classifier(image))  # [{{'label': <class name>, 'score': ...}}, ...]
```
"""
    return f"""## Usage

The architecture is nfzoo's. To install nfzoo, {NFZOO_INSTALL}; then `import nfzoo`
before loading. Without it, timm stops with `Unknown model ({architecture})` and transformers with "The model
architecture '{architecture}' is not supported in your version of timm ... Please upgrade timm":
upgrading timm does not help, `import nfzoo` does. Neither builds another network.

```python
import timm
import nfzoo  # registers nfzoo's models with timm

model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)  # the evaluation preprocessing
transform = timm.data.create_transform(**cfg)
```

transformers (`AutoModelForImageClassification.from_pretrained("{repo}")`, after
`import nfzoo`) and its image processor read the same evaluation preprocessing from
`config.json`. To fetch the files without loading them: `hf download {repo}`.
{grayscale}"""


def trained_model_card(repo_id: str, config: dict[str, Any], run: dict[str, Any], measured: Measured | None,
                       num_params: int, published_sha256: str) -> str:
    """The README.md for a model of ``python -m nfzoo.train``: what it was trained from, its
    classes and preprocessing (``config``: the checkpoint's ``model_config``; ``run``: the
    training run's ``model``, ``pretrained`` and ``epochs``), and the accuracy measured on it with
    the data it was measured on."""
    start = (f"the pretrained weights `{run['model']}`" if run["pretrained"] else
             f"`{run['model']}` with random initial weights")
    c, h, w = config["input_size"]
    names = ", ".join(f"`{n}`" for n in config["label_names"])
    measured_row = _measured_row(measured)
    return f"""---
{_CARD_TAGS}---
# {repo_id}

`{config['architecture']}` (nfzoo, a timm plugin), trained with `python -m nfzoo.train` (nfzoo's NFNet recipe)
from {start}, for {run['epochs']} epoch(s).

- Classes ({config['num_classes']}, in index order): {names}
- Input: {c} channel(s), {h}x{w} px
- Parameters: {num_params / 1e6:.2f} M
- Evaluation: {h} px, {config['crop_mode']} crop {config['crop_pct']}, {config['interpolation']} interpolation, mean {list(config['mean'])}, std {list(config['std'])}
- `{WEIGHTS_FILE}` sha256: `{published_sha256}`

## Validation accuracy

| | top-1 (%) | top-5 (%) |
|---|---|---|
{measured_row}

{_usage(published_name(config['architecture']), repo_id, c)}"""


def upload(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload the :data:`REPO_FILES` of ``folder`` to it (no
    other file of the folder); returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=list(REPO_FILES),
                             commit_message="Add weights (nfzoo)")
    return info.commit_url
