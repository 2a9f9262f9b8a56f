"""Converting the authors' releases to ``model.safetensors`` in nfzoo's layout.

One function, :func:`convert`, for the three source formats of the manifest:
``haiku-pickle`` (DeepMind's NFNets), ``ws-pth`` (the WS/BCN authors' state dicts) and
``openmmlab`` (OpenMMLab's mirrors of the GN+WS files). The PyTorch formats go through the
model family's ``checkpoint_filter_fn``, the same function that loads them at
``create_model(..., pretrained=True)`` time. The result is verified by a strict load into the
model before anything is written, and written with a ``conversion.json`` record so that a
failure while writing (a full disk) leaves neither file. The output folder is new, empty, or
(with ``overwrite``) one whose other files are kept; it never holds the source
(:func:`nfzoo.atomic_files.check_output_dir`).
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

from ..atomic_files import check_output_dir, write_files_atomic
from ..errors import CheckpointError, NfzooError
from .torch_files import load_torch_state_dict
from .files import check_digest, sha256_file
from .haiku import haiku_to_state_dict, load_haiku_params
from .manifest import Checkpoint, manifest
from .state_dict_fit import check_fits

__all__ = ["Conversion", "ConversionError", "convert", "SourceFormat", "SOURCE_FORMATS", "WEIGHTS_FILE",
           "RECORD_FILE"]

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "conversion.json"


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` did: written to ``conversion.json`` next to the weights.

    ``source_md5`` is there when the manifest records the source's md5 (DeepMind's releases),
    which the source then matched."""
    name: str
    architecture: str
    source: str
    source_format: str
    source_sha256: str
    file: str
    sha256: str
    num_params: int
    source_md5: str | None = None


class ConversionError(NfzooError, ValueError):
    """What to convert is not known: a name that is neither a manifest tag nor a timm model
    with a source format, or an unknown source format."""


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


def _source_format(name: str, entry: Checkpoint | None, source_format: str | None) -> str:
    source_format = source_format or (entry.source_format if entry else None)
    if entry is None and not timm.is_model(name.split(".", 1)[0]):
        raise ConversionError(f"{name!r} is neither a tag of the nfzoo manifest (nfzoo.weights.manifest()) nor a "
                              "timm model name; give a tag such as nfnet_f0.dm_in1k")
    if source_format is None:
        raise ConversionError(f"{name} is not a tag of the nfzoo manifest, so its source format is not known; "
                              f"give one of {sorted(SOURCE_FORMATS)}")
    if source_format not in SOURCE_FORMATS:
        raise ConversionError(f"unknown source format {source_format!r} for {name}; give one of "
                              f"{sorted(SOURCE_FORMATS)}")
    return source_format


def convert(
        source: str | os.PathLike,
        name: str,
        out_dir: str | os.PathLike,
        source_format: str | None = None,
        overwrite: bool = False,
) -> Conversion:
    """Convert ``source`` for ``name`` (a manifest tag such as ``"nfnet_f0.dm_in1k"``, or any
    timm model name together with ``source_format``) into ``out_dir/model.safetensors``.

    The source is checked against the digest the manifest records for it
    (:attr:`Checkpoint.source_digest`), when there is one. Raises :class:`CheckpointError` (and
    writes nothing) when the source is unreadable, truncated, or for another model;
    :class:`ConversionError` for an unknown name or format; and
    :class:`~nfzoo.atomic_files.UnsafeOutputError` for an ``out_dir`` that is a file, holds the
    source, or (without ``overwrite``) holds files already.
    """
    source, out_dir = Path(source), Path(out_dir)
    entry = manifest().get(name)
    source_format = _source_format(name, entry, source_format)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file.")
    check_output_dir(out_dir, overwrite, apart_from=[source])
    algorithm, expected = (entry.source_digest if entry else None) or (None, None)
    found = check_digest(source, expected, f"the source of {name}", algorithm) if expected else None
    source_sha256 = found if algorithm == "sha256" else sha256_file(source)
    source_md5 = found if algorithm == "md5" else None

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
        num_params=sum(p.numel() for p in model.parameters()), source_md5=source_md5)
    write_files_atomic({out_dir / WEIGHTS_FILE: weights,
                        out_dir / RECORD_FILE: json.dumps(asdict(record), indent=2) + "\n"})
    return record
