"""Class indices for ImageNet-1k validation data.

Models index the 1000 classes in sorted-synset order (``n01440764`` = 0, the order of timm's
bundled ``imagenet_synsets.txt``). The devkit's ground truth instead holds ILSVRC2012_IDs
(1..1000) in the devkit's own order (``meta.mat``), which is *not* sorted by synset: those ids
go through the meta mapping to a synset, then to the sorted index.
"""
from __future__ import annotations

import json
import pkgutil
import re
from functools import cache
from pathlib import Path

import torch
from timm.data import ImageNetInfo

from ..errors import EvaluationError

__all__ = [
    "NUM_CLASSES", "imagenet_synsets", "val_file_name", "read_ground_truth", "read_devkit_meta",
    "read_class_map", "RealLabels",
]

NUM_CLASSES = 1000
_WNID = re.compile(r"^n\d{8}$")


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k synsets in the models' class order (sorted)."""
    return tuple(ImageNetInfo("imagenet-1k").label_names())


@cache
def _synset_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_synsets())}


def _class_of_wnid(wnid: str, where: str) -> int:
    try:
        return _synset_index()[wnid]
    except KeyError:
        raise EvaluationError(f"{where}: {wnid!r} is not one of the 1000 ImageNet-1k synsets") from None


def val_file_name(number: int) -> str:
    """The devkit's name of validation image ``number`` (1-based)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise EvaluationError(f"cannot read {path}: {e.strerror}") from None


def read_devkit_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> synset for the 1000 leaf classes, from the devkit's ``data/meta.mat``
    (needs scipy) or from a text file with one ``<ILSVRC2012_ID> <synset>`` pair per line."""
    path = Path(path)
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError:
            raise EvaluationError(
                f"reading {path} needs scipy (pip install scipy), or give the mapping as a text "
                "file with one '<ILSVRC2012_ID> <synset>' pair per line") from None
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        pairs = [(int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in synsets if int(s["num_children"]) == 0]
    else:
        pairs = []
        for line in _lines(path):
            fields = line.split()
            if len(fields) != 2 or not fields[0].isdigit():
                raise EvaluationError(f"{path}: expected '<ILSVRC2012_ID> <synset>' per line, got {line!r}")
            pairs.append((int(fields[0]), fields[1]))
    mapping = _unique_mapping(pairs, path)
    if sorted(mapping) != list(range(1, NUM_CLASSES + 1)):
        raise EvaluationError(f"{path}: the meta mapping must cover ILSVRC2012_IDs 1..1000 exactly once")
    for wnid in mapping.values():
        _class_of_wnid(wnid, str(path))
    return mapping


def read_ground_truth(path: Path, meta: Path | None = None) -> dict[str, int]:
    """File name -> class index (sorted-synset order) from a validation ground-truth file.

    Accepted forms, told apart by their lines:

    * the devkit's ``ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID per line, line i
      for ``ILSVRC2012_val_<i>.JPEG``; needs ``meta`` (see :func:`read_devkit_meta`);
    * one synset per line (``n01751748``), line i for ``ILSVRC2012_val_<i>.JPEG``;
    * ``<file name> <label>`` per line, the label a synset or a 0-based sorted-synset index
      (the common ``val.txt``).
    """
    lines = _lines(path)
    if not lines:
        raise EvaluationError(f"ground-truth file {path} is empty")
    first = lines[0].split()
    if len(first) == 2:
        pairs = []
        for line in lines:
            fields = line.split()
            if len(fields) != 2:
                raise EvaluationError(f"{path}: expected '<file name> <label>' per line, got {line!r}")
            name, label = fields
            pairs.append((name, _class_of_index(label, path) if label.isdigit() else _class_of_wnid(label, str(path))))
        return _unique_mapping(pairs, path)
    if _WNID.match(first[0]):
        return {val_file_name(i + 1): _class_of_wnid(wnid, str(path)) for i, wnid in enumerate(lines)}
    if first[0].isdigit():
        if meta is None:
            raise EvaluationError(
                f"{path} holds devkit ILSVRC2012_IDs, whose order is not the models' sorted-synset "
                "order: pass the devkit's data/meta.mat (or an 'ID synset' text file) with --gt-meta")
        id_to_wnid = read_devkit_meta(meta)
        out = {}
        for i, line in enumerate(lines):
            if not line.isdigit() or int(line) not in id_to_wnid:
                raise EvaluationError(f"{path}, line {i + 1}: {line!r} is not an ILSVRC2012_ID in 1..1000")
            out[val_file_name(i + 1)] = _synset_index()[id_to_wnid[int(line)]]
        return out
    raise EvaluationError(
        f"{path}: unrecognised ground-truth format (line 1: {lines[0]!r}); see docs/eval.md for the "
        "accepted forms")


def _class_of_index(label: str, path: Path) -> int:
    index = int(label)
    if not 0 <= index < NUM_CLASSES:
        raise EvaluationError(f"{path}: class index {index} is outside 0..999")
    return index


def _unique_mapping(pairs: list[tuple], path: Path) -> dict:
    """``dict(pairs)``, refusing a key given twice with different values (a repeat with the same
    value is harmless)."""
    out = {}
    for key, value in pairs:
        if out.setdefault(key, value) != value:
            raise EvaluationError(f"{path}: {key!r} is given twice, as {out[key]!r} and as {value!r}; "
                                  "keep the line that is right")
    return out


def read_class_map(path: Path) -> dict[str, int]:
    """Class name -> class index from a class map in timm's text format (what timm's
    ``validate.py --class-map`` reads): one class name per line, the line's index (from 0,
    blank lines included) is the class index. In an image folder the names are the folder
    names; timm's bundled ``imagenet_synsets.txt`` maps synset-named folders of any subset
    of ImageNet-1k."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvaluationError(f"cannot read class map {path}: {getattr(e, 'strerror', None) or e}") from None
    names = [line.strip() for line in text.split("\n")]  # as timm's reader iterates the file's lines
    out = _unique_mapping([(name, i) for i, name in enumerate(names) if name], path)
    if not out:
        raise EvaluationError(f"class map {path} is empty")
    return out


class RealLabels:
    """ImageNet-ReaL ("Are we done with ImageNet?", Beyer et al. 2020) multi-label accuracy.

    The labels are timm's bundled copy of the authors' ``real.json`` unless a path is given:
    entry i lists the acceptable classes of ``ILSVRC2012_val_<i+1>.JPEG`` (empty: the image is
    left out of ReaL accuracy, as in the paper).
    """

    def __init__(self, path: Path | None = None):
        if path is None:
            raw = pkgutil.get_data("timm.data", "_info/imagenet_real_labels.json")
        else:
            try:
                raw = Path(path).read_bytes()
            except OSError as e:
                raise EvaluationError(f"cannot read ReaL labels {path}: {e.strerror}") from None
        self.labels = {val_file_name(i + 1): set(v) for i, v in enumerate(json.loads(raw))}

    def count(self, names: list[str], top5: torch.Tensor) -> torch.Tensor:
        """(labelled images, top-1 hits, top-5 hits) for images ``names`` with predictions
        ``top5`` (B, 5) in descending score order."""
        counts = torch.zeros(3, dtype=torch.int64)
        for name, preds in zip(names, top5.tolist()):
            try:
                real = self.labels[Path(name).name]
            except KeyError:
                raise EvaluationError(
                    f"--real-labels: {name!r} is not an ImageNet validation file name "
                    "(ILSVRC2012_val_<n>.JPEG)") from None
            if real:
                counts += torch.tensor([1, preds[0] in real, any(p in real for p in preds)])
        return counts
