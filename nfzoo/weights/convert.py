"""Converting the authors' releases to ``model.safetensors`` in nfzoo's layout.

One function, :func:`convert`, for the three source formats of the manifest:
``haiku-pickle`` (DeepMind's NFNets), ``ws-pth`` (the WS/BCN authors' state dicts) and
``openmmlab`` (OpenMMLab's mirrors of the GN+WS files). The PyTorch formats go through the
model family's ``checkpoint_filter_fn``, the same function that loads them at
``create_model(..., pretrained=True)`` time. The result is verified by a strict load into the
model before anything is written, and written with a ``conversion.json`` record so that a
failure while writing (a full disk) leaves neither file.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import timm
import torch
import torch.nn as nn

from .checkpoints import load_torch_state_dict
from .state_dict_fit import check_fits
from .errors import CheckpointError
from ..atomic_files import write_files_atomic
from .files import check_digest, check_sha256, sha256_file
from .haiku import haiku_to_state_dict, load_haiku_params
from .manifest import manifest

__all__ = ["Conversion", "convert", "SourceFormat", "SOURCE_FORMATS", "WEIGHTS_FILE", "RECORD_FILE"]

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "conversion.json"


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` did: written to ``conversion.json`` next to the weights."""
    name: str
    architecture: str
    source: str
    source_format: str
    source_sha256: str
    file: str
    sha256: str
    num_params: int


def _torch_to_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The model family's ``checkpoint_filter_fn``, as used for ``pretrained=True`` loading."""
    family = sys.modules[type(model).__module__]
    filter_fn: Callable | None = getattr(family, "checkpoint_filter_fn", None)
    return filter_fn(state_dict, model) if filter_fn is not None else state_dict


@dataclass(frozen=True)
class SourceFormat:
    """How to read a source file (before the model exists), and map what it holds onto a model."""
    read: Callable[[Path], Any]
    to_state_dict: Callable[[Any, nn.Module], dict[str, torch.Tensor]]


SOURCE_FORMATS: dict[str, SourceFormat] = {
    "haiku-pickle": SourceFormat(load_haiku_params, haiku_to_state_dict),
    "ws-pth": SourceFormat(load_torch_state_dict, _torch_to_state_dict),
    "openmmlab": SourceFormat(load_torch_state_dict, _torch_to_state_dict),
}


def convert(
        source: str | os.PathLike,
        name: str,
        out_dir: str | os.PathLike,
        source_format: str | None = None,
) -> Conversion:
    """Convert ``source`` for ``name`` (a manifest tag such as ``"nfnet_f0.dm_in1k"``, or any
    timm model name together with ``source_format``) into ``out_dir/model.safetensors``.

    The source is checked against the manifest's ``source_sha256`` when it records one.
    Raises :class:`CheckpointError` (and writes nothing) when the source is unreadable,
    truncated, or for another model.
    """
    import nfzoo  # noqa: F401  (registers the zoo's models with timm)

    source, out_dir = Path(source), Path(out_dir)
    entry = manifest().get(name)
    source_format = source_format or (entry.source_format if entry else None)
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r} for {name!r}; "
                         f"give one of {sorted(SOURCE_FORMATS)}")
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file.")
    if entry and entry.source_md5:
        check_digest(source, entry.source_md5, f"the source of {name}", algorithm="md5")
    known_sha256 = entry and (entry.source_sha256 or (entry.sha256 if entry.url == entry.source_url else None))
    if known_sha256:  # OpenMMLab mirrors: the loadable file is the source, with a sha256 prefix
        source_sha256 = check_sha256(source, known_sha256, f"the source of {name}")
    else:
        source_sha256 = sha256_file(source)

    fmt = SOURCE_FORMATS[source_format]
    contents = fmt.read(source)
    architecture = name.split(".", 1)[0]
    model = timm.create_model(architecture, pretrained=False)
    state_dict = fmt.to_state_dict(contents, model)
    check_fits(state_dict, model, str(source))
    model.load_state_dict(state_dict, strict=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    metadata = {"format": "pt", "nfzoo_name": name, "source_sha256": source_sha256}
    # Serialised in memory and written by Python: safetensors' own file writer can drop a
    # write error (a full disk) silently, and both files must be complete before either lands.
    weights = safetensors.torch.save(tensors, metadata=metadata)
    record = Conversion(
        name=name, architecture=architecture, source=str(source), source_format=source_format,
        source_sha256=source_sha256, file=WEIGHTS_FILE, sha256=hashlib.sha256(weights).hexdigest(),
        num_params=sum(p.numel() for p in model.parameters()))
    write_files_atomic({out_dir / WEIGHTS_FILE: weights,
                        out_dir / RECORD_FILE: json.dumps(asdict(record), indent=2) + "\n"})
    return record
