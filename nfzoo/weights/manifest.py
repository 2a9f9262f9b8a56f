"""The weights manifest (``weights/manifest.toml``): the one place that states, for every
pretrained tag, where its weights are, what format they came in and what they score."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import NfzooError

__all__ = ["Checkpoint", "Paper", "UnknownCheckpointError", "manifest", "checkpoint", "paper", "pretrained_cfg"]


class UnknownCheckpointError(NfzooError, KeyError):
    """A name that is not a ``"<model>.<tag>"`` of the manifest."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Checkpoint:
    name: str
    source_url: str
    source_format: str
    publish_repo: str
    test_size: int
    crop_pct: float
    crop_mode: str
    interpolation: str
    license: str
    paper: str
    hf_hub_id: str | None = None
    url: str | None = None
    file: str | None = None  # a file shipped in the package, relative to manifest.toml's folder
    sha256: str | None = None
    source_sha256: str | None = None
    source_md5: str | None = None
    top1: float | None = None
    top5: float | None = None
    accuracy_source: str | None = None
    dataset: str = "imagenet-1k"
    eval_images: int = 50_000  # how many validation images top1/top5 were measured on
    tolerance: float | None = None  # --check tolerance in points, when it differs from the harness's default

    @property
    def file_path(self) -> Path | None:
        """The absolute path of :attr:`file`, or None."""
        return None if self.file is None else Path(str(files("nfzoo.weights").joinpath(self.file)))

    @property
    def source_digest(self) -> tuple[str, str] | None:
        """The digest the manifest records for the source release, as ``(algorithm, hex)``, or
        None when none is known: its ``source_sha256``; the loadable file's ``sha256`` when that
        file is the source (OpenMMLab's mirrors, whose names carry an 8-hex-digit prefix of it);
        or its ``source_md5``. A hex value shorter than the digest is a prefix of it."""
        if self.source_sha256:
            return "sha256", self.source_sha256
        if self.sha256 and self.url == self.source_url:
            return "sha256", self.sha256
        if self.source_md5:
            return "md5", self.source_md5
        return None

    @property
    def model(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]


@cache
def _data() -> dict[str, Any]:
    return tomllib.loads(files("nfzoo.weights").joinpath("manifest.toml").read_text())


@dataclass(frozen=True)
class Paper:
    id: str
    title: str
    bibtex: str


def paper(paper_id: str) -> Paper:
    """Title and BibTeX of a paper the manifest cites (``"arXiv:2102.06171"``)."""
    return Paper(id=paper_id, **_data()["paper"][paper_id])


@cache
def manifest() -> dict[str, Checkpoint]:
    """Every checkpoint of the zoo, keyed by ``"<model>.<tag>"``."""
    data = _data()
    known = {f.name for f in fields(Checkpoint)}
    out = {}
    for entry in data["checkpoint"]:
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"manifest entry {entry.get('name')!r} has unknown fields {sorted(unknown)}")
        ckpt = Checkpoint(**entry)
        out[ckpt.name] = ckpt
    return out


def checkpoint(name: str) -> Checkpoint:
    """The manifest entry for ``"<model>.<tag>"``, with an error listing the known tags."""
    try:
        return manifest()[name]
    except KeyError:
        known = sorted(n for n in manifest() if n.startswith(name.split(".", 1)[0] + "."))
        raise UnknownCheckpointError(f"no checkpoint {name!r} in the nfzoo manifest; known for this model: "
                                     f"{known or 'none'} (all: nfzoo.weights.manifest())") from None


def pretrained_cfg(name: str, **cfg: Any) -> dict[str, Any]:
    """A timm pretrained cfg for ``name``: the given defaults overlaid with the manifest's facts."""
    c = checkpoint(name)
    size = (cfg.get("input_size", (3,))[0], c.test_size, c.test_size)
    cfg.update(
        hf_hub_id=c.hf_hub_id,
        url=c.url or "",
        file=str(c.file_path) if c.file_path else None,
        test_input_size=size if cfg.get("input_size", size) != size else None,
        input_size=cfg.get("input_size", size),
        crop_pct=c.crop_pct,
        crop_mode=c.crop_mode,
        interpolation=c.interpolation,
        license=c.license,
        paper_ids=c.paper,
        origin_url=c.source_url,
    )
    return {k: v for k, v in cfg.items() if v is not None}
