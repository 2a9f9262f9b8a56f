"""Pretrained loading for every zoo model: verified downloads and clear errors.

:func:`build_zoo_model <nfzoo.models._builder.build_zoo_model>` calls two things from here:

* :func:`resolve_pretrained_file` fetches the weights timm would fetch (the same Hugging Face
  cache, the same torch.hub checkpoint folder), checks them, and hands timm the local file
  through ``pretrained_cfg_overlay=dict(file=...)``. When the manifest records a sha256 for
  that location, a file that does not match is refused and removed from the cache
  (OpenMMLab's 8-hex-digit prefixes count as such a record). A download is verified before it
  is moved into the cache, so a corrupt download never lands there. Removing a bad entry
  removes only what really lies inside the cache folder (:func:`_evict`).
* :func:`fitting_filter` wraps a family's checkpoint filter with the key and shape check (the
  one check of a load), so a checkpoint made for another model fails with a message that says so.

:func:`unwrap_state_dict` is the first step of every family's checkpoint filter.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torch.hub
import torch.nn as nn
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from timm.models import clean_state_dict, resolve_pretrained_cfg

from ..atomic_files import atomic_path
from ..errors import CheckpointError, WeightsUnavailableError
from ..timm_private import hf_split, pretrained_source
from .torch_files import check_torch_checkpoint
from .files import check_sha256
from .state_dict_fit import check_fits
from .manifest import Checkpoint, manifest

__all__ = ["resolve_pretrained_file", "fitting_filter", "unwrap_state_dict", "HF_WEIGHTS_FILES"]

# What timm looks for in a Hub repository, in its order; the manifest's sha256 is for the first.
HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_pretrained_file(
        variant: str,
        pretrained_cfg: str | dict | None = None,
        pretrained_cfg_overlay: dict | None = None,
        cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The ``pretrained_cfg_overlay`` to build ``variant`` with: the caller's, plus ``file=``
    naming a local, checked copy of the weights when they come from the Hub or a URL."""
    overlay = dict(pretrained_cfg_overlay or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, overlay).to_dict()
    load_from, location = pretrained_source(cfg)
    if cfg.get("custom_load") or load_from not in ("hf-hub", "url", "file"):
        return overlay  # a state dict, a local dir or a custom loader: timm's own path
    entry = manifest().get(f"{cfg.get('architecture')}.{cfg.get('tag')}")
    if load_from == "hf-hub":
        repo, filename = location if isinstance(location, tuple) else (location, None)
        expected = entry.sha256 if entry and entry.hf_hub_id == repo and not filename else None
        path = _fetch_from_hub(repo, filename, cache_dir, expected, entry)
    elif load_from == "url":
        expected = entry.sha256 if entry and entry.url == location else None
        path = _fetch_url(location, cache_dir, expected, entry)
    else:
        path = Path(location)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"{_weights_of(entry)} are expected at {path}, which does not exist. Put the file there, "
                "or give its place with pretrained_cfg_overlay=dict(file=...)"
                + (f" (it ships with nfzoo: reinstall nfzoo, or retrain it with {entry.source_url})."
                   if entry and entry.file else "."))
        _check(path, entry.sha256 if entry and entry.file_path == path else None, entry)
    # source='file': timm would otherwise prefer the hf_hub_id of an 'hf-hub' cfg over file=.
    return {**overlay, "file": str(path), "source": "file"}


def _fetch_from_hub(repo: str, filename: str | None, cache_dir, expected: str | None,
                    entry: Checkpoint | None) -> Path:
    repo_id, revision = hf_split(repo)
    names = (filename,) if filename else HF_WEIGHTS_FILES
    for i, name in enumerate(names):
        try:
            path = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                        library_name="timm"))
            break
        except EntryNotFoundError:
            if i == len(names) - 1:
                raise
    # <cache>/models--<org>--<name>/snapshots/<revision>/<file>: the cache is above the repo folder.
    cache = next((p.parent.parent for p in path.parents if p.name == "snapshots"), path.parent)
    _check_or_evict(path, expected if path.name == HF_WEIGHTS_FILES[0] else None, entry, cache)
    return path


def _fetch_url(url: str, cache_dir, expected: str | None, entry: Checkpoint | None) -> Path:
    folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(url).path)
    if path.exists():
        _check_or_evict(path, expected, entry, folder)
        return path
    try:
        with atomic_path(path) as tmp:  # checked before it enters the cache
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
            _check(tmp, expected, entry)
    except OSError as e:  # offline, host unreachable, HTTP error
        raise WeightsUnavailableError(
            f"cannot download {_weights_of(entry)} from {url} ({type(e).__name__}: {e}), and they are "
            f"not in the local cache: expected {path}. Download the file where there is network access "
            f"(e.g. `curl -L -o {path.name} {url}`) and put it at {path} (torch.hub's checkpoint folder, "
            "under TORCH_HOME), or give its place with pretrained_cfg_overlay=dict(file=...).") from e
    return path


def _check(path: Path, expected: str | None, entry: Checkpoint | None) -> None:
    if expected:
        check_sha256(path, expected, _what(entry))
    check_torch_checkpoint(path)


def _check_or_evict(path: Path, expected: str | None, entry: Checkpoint | None, cache: Path) -> None:
    """Check a file of the cache folder ``cache``; if it is bad, evict it (:func:`_evict`)."""
    try:
        _check(path, expected, entry)
    except CheckpointError as e:
        if _evict(path, cache):
            raise type(e)(f"{e} It has been removed from the cache; run again to download it afresh.") from None
        raise type(e)(f"{e} It lies outside the cache folder {cache} (through a symlink), so nfzoo left it "
                      "there: replace or remove it yourself.") from None


def _evict(path: Path, cache: Path) -> bool:
    """Remove the cache entry ``path`` and, when it is a symlink, the file it leads to (the Hub's
    blob), each only where its real location lies inside the real ``cache`` folder. A symlink is
    removed as a link, never through it; a folder is never removed. Returns whether the entry
    itself was removed."""
    root = Path(os.path.realpath(cache))
    entry = Path(os.path.realpath(path.parent)) / path.name  # the link itself, its folders resolved
    target = Path(os.path.realpath(path))
    inside = [p for p in dict.fromkeys((entry, target)) if p.is_relative_to(root) and p != root]
    for p in inside:
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
    return entry in inside


def _weights_of(entry: Checkpoint | None) -> str:
    return f"the weights of {entry.name}" if entry else "the pretrained weights"


def _what(entry: Checkpoint | None) -> str:
    return entry.name if entry else "this file"


def unwrap_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (``{'state_dict': ...}`` or ``{'model': ...}``),
    without the prefixes DataParallel/DDP and ``torch.compile`` add (timm's ``clean_state_dict``)."""
    for container in ("state_dict", "model"):
        if isinstance(checkpoint.get(container), dict):
            checkpoint = checkpoint[container]
    return clean_state_dict(checkpoint)


def fitting_filter(
        filter_fn: Callable[[dict, nn.Module], dict] | None,
        **fit_options: Any,
) -> Callable[[dict, nn.Module], dict]:
    """``filter_fn`` followed by a check that the result fits the model (see :func:`check_fits`;
    ``fit_options`` are a family's ``optional`` keys and ``describe``)."""
    def filter_and_check(state_dict: dict, model: nn.Module) -> dict:
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, model)
        cfg = model.pretrained_cfg
        source = cfg.get("file") or cfg.get("hf_hub_id") or cfg.get("url") or "the pretrained checkpoint"
        check_fits(state_dict, model, source, skip=_names(cfg.get("classifier")), first_conv=cfg.get("first_conv"),
                   **fit_options)
        return state_dict
    return filter_and_check


def _names(value: str | tuple | list | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or ())
