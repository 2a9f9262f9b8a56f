"""Where validation images come from: an ImageFolder, the devkit's flat folder, or parquet shards.

A source is an indexed list of labelled images: ``names[i]`` (the path relative to the data
folder, for messages and ImageNet-ReaL), ``labels[i]`` (the model's class index) and ``open(i)``
(a decoded RGB PIL image). ``open`` raises :class:`UndecodableImage` for an image that cannot be
decoded, whatever PIL raised for it (``OSError``, ``ValueError``, ``SyntaxError`` ...), and for
a file that is not a regular file (a FIFO or a device, never opened); anything else it raises is
a problem with the source, not with one image.
"""
from __future__ import annotations

import io
import stat
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..errors import EvaluationError
from .labels import NUM_CLASSES, read_class_map, read_ground_truth

__all__ = ["UndecodableImage", "FileSource", "ParquetSource", "image_folder", "flat_val_folder", "open_source"]

FLAT_VAL_GLOB = "ILSVRC2012_val_*.JPEG"
# torchvision's image extensions, and GIFs: decoding one gives its first frame.
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


class UndecodableImage(Exception):
    """One image cannot be decoded: the harness counts it as a bad image and goes on."""


# PIL opens 16-bit grayscale PNGs in these modes; its convert("RGB") clips them at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _decode(fp) -> Image.Image:
    """The RGB image in ``fp``; :class:`UndecodableImage` when PIL cannot decode it."""
    try:
        with Image.open(fp) as img:
            if img.mode in _SIXTEEN_BIT_MODES:  # 0..65535 onto 0..255: v * 255 / 65535 = v / 257
                img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257).astype(np.uint8), "L")
            return img.convert("RGB")  # convert() decodes the whole image: truncation fails here
    except Exception as e:  # noqa: BLE001  PIL's decode failures have many types (OSError, SyntaxError ...)
        raise UndecodableImage(f"{type(e).__name__}: {e}") from e


class FileSource:
    """Images stored as files under ``root``."""

    def __init__(self, paths: list[Path], labels: list[int], description: str, root: Path):
        self.paths, self.labels, self.description = paths, labels, description
        self.names = [str(p.relative_to(root)) for p in paths]

    def __len__(self) -> int:
        return len(self.labels)

    def open(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise UndecodableImage(f"cannot read it: {e.strerror}") from e
        if not stat.S_ISREG(mode):  # opening a FIFO would wait for a writer forever
            raise UndecodableImage("not a regular file")
        return _decode(path)


class ParquetSource:
    """Hugging Face ``imagenet-1k``-style parquet shards: an ``image`` column (struct of
    ``bytes`` and ``path``) and an integer ``label`` column in sorted-synset order.

    Images are read a row group at a time; each process keeps the last row group it read,
    so sequential access (how the harness reads) decodes each row group about once per worker.
    """

    def __init__(self, files: list[Path]):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise EvaluationError("reading parquet shards needs pyarrow (pip install pyarrow)") from None

        self.files = files
        self.locations: list[tuple[int, int, int]] = []  # (file, row group, row in group)
        self.names, self.labels = [], []
        for f_idx, path in enumerate(files):
            pf = pq.ParquetFile(path)
            columns = set(pf.schema_arrow.names)
            if not {"image", "label"} <= columns:
                raise EvaluationError(f"{path}: parquet shards need 'image' and 'label' columns, found {sorted(columns)}")
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=["image.path", "label"])
                labels = table.column("label").to_pylist()
                if any(label is None or not 0 <= label < NUM_CLASSES for label in labels):
                    raise EvaluationError(
                        f"{path}: labels must be class indices 0..999 (the test split, label -1, "
                        "has no labels to validate against)")
                paths = [image["path"] for image in table.column("image").to_pylist()]
                start = len(self.labels)
                self.names += [p or f"{path.name}#{start + i}" for i, p in enumerate(paths)]
                self.labels += labels
                self.locations += [(f_idx, rg, i) for i in range(len(labels))]
        self.description = f"{len(files)} parquet shard(s) in {files[0].parent}"
        self._cached: tuple[tuple[int, int], list[bytes]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):  # DataLoader workers start with an empty cache
        return {**self.__dict__, "_cached": None}

    def open(self, index: int) -> Image.Image:
        import pyarrow.parquet as pq

        f_idx, rg, row = self.locations[index]
        if self._cached is None or self._cached[0] != (f_idx, rg):
            table = pq.ParquetFile(self.files[f_idx]).read_row_group(rg, columns=["image.bytes"])
            self._cached = ((f_idx, rg), [image["bytes"] for image in table.column("image").to_pylist()])
        return _decode(io.BytesIO(self._cached[1][row]))


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise EvaluationError(f"data folder {root} does not exist (or is not a folder)")


def image_folder(root: Path, class_map: Path | None = None, class_names: list[str] | None = None) -> FileSource:
    """One sub-folder per class. With ``class_map`` (timm's format, see
    :func:`~nfzoo.evaluation.labels.read_class_map`) or ``class_names`` (the class names of a
    checkpoint, in index order) each folder is the class of its name. Otherwise there must be
    exactly 1000 folders: named ``0`` ... ``999``, each is the class of its number; else they are
    taken in sorted order (synset-named folders then match the models' classes).

    Files that are not images by their extension are left out and counted in the description;
    GIFs are read as their first frame, and counted there too."""
    _require_dir(root)
    folders, _ = find_classes(str(root))
    how = ""
    if class_map is not None or class_names is not None:
        if class_map is not None:
            class_to_idx, named_by = read_class_map(class_map), f"class map {class_map}"
        else:
            class_to_idx, named_by = {name: i for i, name in enumerate(class_names)}, "the checkpoint's label_names"
        missing = sorted(set(folders) - set(class_to_idx))
        if missing:
            raise EvaluationError(f"{named_by} has no class named {missing[0]!r} (a folder of {root}; "
                                  f"{len(missing)} such folder(s)); class maps list one class name per line, "
                                  "the line's index being the class index")
        class_to_idx = {f: class_to_idx[f] for f in folders}
    elif len(folders) != NUM_CLASSES:
        raise EvaluationError(
            f"{root} has {len(folders)} class folders, not the 1000 of ImageNet-1k: give --class-map "
            "to say which model class each folder is")
    elif all(f.isdigit() for f in folders):
        class_to_idx = _numeric_classes(root, folders)
        how = " (folders named by class index, mapped by number)"
    else:
        class_to_idx = {f: i for i, f in enumerate(folders)}
    left_out: list[str] = []

    def is_image(path: str) -> bool:
        if path.lower().endswith(IMAGE_EXTENSIONS):
            return True
        left_out.append(path)
        return False

    samples = make_dataset(str(root), class_to_idx, is_valid_file=is_image, allow_empty=True)
    if not samples:
        raise EvaluationError(f"{root} has class folders but no images in them")
    gifs = sum(p.lower().endswith(".gif") for p, _ in samples)
    if gifs:
        how += f"; {gifs} GIF(s) read as their first frame"
    if left_out:
        suffixes = sorted({Path(p).suffix or "(none)" for p in left_out})
        how += f"; {len(left_out)} file(s) left out as not images (extension {', '.join(suffixes[:5])})"
    return FileSource([Path(p) for p, _ in samples], [c for _, c in samples], f"image folder {root}{how}", root)


def _numeric_classes(root: Path, folders: list[str]) -> dict[str, int]:
    """Folders named ``0`` ... ``999`` are class indices: sorted as strings, ``10`` would come
    before ``2``, so they are mapped by their number."""
    indices = {f: int(f) for f in folders}
    if sorted(indices.values()) != list(range(NUM_CLASSES)):
        raise EvaluationError(
            f"{root}: class folders named by number must be exactly 0 ... {NUM_CLASSES - 1} (each once); "
            "give --class-map to say which model class each folder is")
    return indices


def flat_val_folder(root: Path, ground_truth: Path, meta: Path | None = None) -> FileSource:
    """The devkit's flat ``ILSVRC2012_val_*.JPEG`` folder with a ground-truth file
    (see :func:`nfzoo.evaluation.labels.read_ground_truth`)."""
    _require_dir(root)
    truth = read_ground_truth(ground_truth, meta)
    paths = sorted(root.glob(FLAT_VAL_GLOB))
    unknown = [p.name for p in paths if p.name not in truth]
    if unknown:
        raise EvaluationError(f"ground truth {ground_truth} has no label for {unknown[0]} ({len(unknown)} such files)")
    return FileSource(paths, [truth[p.name] for p in paths], f"flat validation folder {root}", root)


def open_source(
    data_dir: Path,
    *,
    ground_truth: Path | None = None,
    gt_meta: Path | None = None,
    class_map: Path | None = None,
    class_names: list[str] | None = None,
) -> FileSource | ParquetSource:
    """The source for ``data_dir``, by its layout: parquet shards (``*.parquet`` in it or in
    ``data_dir/data``, or a single ``.parquet`` file), a flat devkit folder (needs
    ``ground_truth``), or an image folder of class sub-folders (see :func:`image_folder`)."""
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.suffix == ".parquet":
        return ParquetSource([data_dir])
    _require_dir(data_dir)
    shards = sorted(data_dir.glob("*.parquet")) or sorted(data_dir.glob("data/*.parquet"))
    if shards:
        return ParquetSource(shards)
    if ground_truth is not None:
        return flat_val_folder(data_dir, ground_truth, gt_meta)
    if next(data_dir.glob(FLAT_VAL_GLOB), None) is not None:
        raise EvaluationError(
            f"{data_dir} is a flat folder of ILSVRC2012_val_*.JPEG files: give their labels with "
            "--ground-truth (see docs/eval.md for the accepted files)")
    if not any(p.is_dir() for p in data_dir.iterdir()):
        raise EvaluationError(f"data folder {data_dir} is empty: expected class sub-folders, "
                              "ILSVRC2012_val_*.JPEG files or parquet shards")
    return image_folder(data_dir, class_map, class_names)
