"""nfzoo.atomic_files: one writer for every output; nothing half-written, nothing left behind,
ordinary permissions, and a clear error on a full disk."""
import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nfzoo.atomic_files as atomic_files
from nfzoo.atomic_files import (DiskFullError, UnsafeOutputError, atomic_dir, atomic_open, remove_stale_temporaries,
                                write_atomic, write_files_atomic)

REPO = Path(__file__).resolve().parents[1]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def disk_fills_up(monkeypatch):
    """Make the disk 'fill up' once ``budget`` bytes have been written through atomic_files."""
    real_open = builtins.open

    def fill_after(budget):
        class Full:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                nonlocal budget
                budget -= len(data)
                if budget < 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def opener(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return Full(f) if "w" in mode else f

        monkeypatch.setattr(atomic_files, "open", opener, raising=False)
    return fill_after


def test_files_and_folders_get_the_usual_umask_mode(tmp_path):
    write_atomic(tmp_path / "a.json", "{}")
    with atomic_dir(tmp_path / "repo") as folder:
        (folder / "b.txt").write_text("b")
    expected = 0o666 & ~_umask()
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "repo" / "b.txt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.pth"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write(b"new, half")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.pth"]


def test_a_full_disk_is_a_clear_error_naming_the_file(tmp_path, disk_fills_up):
    path = tmp_path / "results.json"
    write_atomic(path, "old")
    disk_fills_up(10)
    with pytest.raises(DiskFullError, match=rf"no space left on the device while writing {path}.*Free some space"):
        write_atomic(path, "x" * 100)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_several_files_are_all_written_or_none(tmp_path, disk_fills_up):
    a, b = tmp_path / "model.safetensors", tmp_path / "conversion.json"
    disk_fills_up(150)  # the first file fits, the second does not
    with pytest.raises(DiskFullError, match="conversion.json"):
        write_files_atomic({a: b"w" * 100, b: "r" * 100})
    assert os.listdir(tmp_path) == []


def test_a_disk_full_conversion_leaves_nothing(tmp_path, disk_fills_up):
    import timm

    import nfzoo  # noqa: F401
    from nfzoo.weights.convert import convert

    source = tmp_path / "src.pth"
    torch.save(timm.create_model("resnet50_gn_ws").state_dict(), source)
    convert(source, "resnet50_gn_ws", tmp_path / "fits", source_format="ws-pth")
    weights_size = (tmp_path / "fits" / "model.safetensors").stat().st_size
    out = tmp_path / "out"
    disk_fills_up(weights_size + 10)  # the weights fit, conversion.json does not
    with pytest.raises(DiskFullError, match="conversion.json"):
        convert(source, "resnet50_gn_ws", out, source_format="ws-pth")
    assert list(out.iterdir()) == []


def _killed_writer(target: Path) -> None:
    """A process killed with SIGKILL while it writes ``target`` through atomic_open."""
    code = ("import os, signal, sys\nfrom nfzoo.atomic_files import atomic_open\n"
            "with atomic_open(sys.argv[1]) as f:\n    f.write(b'x' * 1000); f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9


def test_temporaries_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pth"
    _killed_writer(target)
    first = [p.name for p in tmp_path.iterdir()]
    assert len(first) == 1 and first[0].startswith(".last.pth.") and first[0].endswith(".partial")
    _killed_writer(target)  # the second writer removed the first one's leftover before it was killed
    second = [p.name for p in tmp_path.iterdir()]
    assert len(second) == 1 and second != first
    (tmp_path / "other.txt").write_text("not ours")
    with atomic_open(tmp_path / "unrelated.bin") as f:  # a write to another target leaves it
        f.write(b"u")
    assert [p.name for p in tmp_path.glob(".last.pth.*")] == second
    write_atomic(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "other.txt", "unrelated.bin"]


def test_temporaries_of_live_writers_are_kept(tmp_path):
    target = tmp_path / "last.pth"
    with atomic_open(target) as f:
        f.write(b"x")
        assert remove_stale_temporaries(target) == []
        assert len(list(tmp_path.glob(".last.pth.*"))) == 1


def test_the_trainer_start_removes_what_killed_checkpoint_writes_left(tmp_path):
    from test_train_trainer import make_trainer

    from nfzoo.train import CHECKPOINT_NAME

    _killed_writer(tmp_path / CHECKPOINT_NAME)
    assert list(tmp_path.glob(f".{CHECKPOINT_NAME}.*"))
    make_trainer(tmp_path)
    assert not list(tmp_path.glob(f".{CHECKPOINT_NAME}.*"))


def test_the_harness_prints_its_results_when_it_cannot_write_them(tmp_path, capsys, disk_fills_up):
    from nfzoo.evaluation.validate_cli import main

    disk_fills_up(0)
    status = main(["--model", "resnet50_gn_ws", "--demo-images", "2", "--img-size", "32", "--workers", "0",
                   "--no-progress", "--results-file", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert status == 1 and "no space left" in err and str(tmp_path / "r.json") in err
    rows = json.loads(out[out.index("["):])
    assert rows[0]["model"] == "resnet50_gn_ws" and rows[0]["images"] == 2
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_holds_files_is_refused_unless_overwrite_and_then_only_its_files_are_replaced(tmp_path):
    out = tmp_path / "repo"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    (out / "card.md").write_text("old")
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_text("a file of the user's")
    os.symlink(elsewhere, out / "link.md")
    with pytest.raises(UnsafeOutputError, match="already holds files"):
        with atomic_dir(out) as folder:
            raise AssertionError("never reached")
    with atomic_dir(out, overwrite=True) as folder:
        for name in ("card.md", "link.md", "new.bin"):
            (folder / name).write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["card.md", "keep.txt", "link.md", "new.bin", "sub"]
    assert (out / "keep.txt").read_text() == "mine" and (out / "card.md").read_text() == "new"
    assert not (out / "link.md").is_symlink() and elsewhere.read_text() == "a file of the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.md", "repo"]  # no temporary left


def test_a_new_folder_appears_whole_and_an_empty_one_is_filled(tmp_path):
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with atomic_dir(out) as folder:
            (folder / "a.txt").write_text("a")
            assert not (out / "a.txt").exists()
        assert [p.name for p in out.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("case", ["a file", "a folder where a file goes", "inside the input", "above the input"])
def test_outputs_that_would_replace_what_nfzoo_did_not_write_are_refused(tmp_path, case):
    source = tmp_path / "input"
    source.mkdir()
    (source / "w.bin").write_bytes(b"w")
    out = {"a file": source / "w.bin", "a folder where a file goes": tmp_path / "out",
           "inside the input": source / "out", "above the input": tmp_path}[case]
    if case == "a folder where a file goes":
        (out / "a.txt").mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeOutputError):
        with atomic_dir(out, overwrite=True, apart_from=[source]) as folder:
            (folder / "a.txt").write_text("a")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
