"""weights/convert.py and weights/publish.py: every bad argument is one line and a non-zero exit;
a full disk or a file-size limit is one line naming the path, with nothing partial left."""
import errno
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import nfzoo  # noqa: F401
import nfzoo.atomic_files as atomic_files
from cli_helpers import assert_one_line_error
from nfzoo.weights import checkpoint

REPO = Path(__file__).resolve().parents[1]
DEMO = "nfnet_mini.nfzoo_fmnist"


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"weights_{name}_cli", REPO / "weights" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_cli, publish_cli = _tool("convert"), _tool("publish")


@pytest.fixture
def files(tmp_path):
    """A tiny model's state dict to convert, a folder to publish, and a file."""
    source = tmp_path / "release" / "mini.pth"
    source.parent.mkdir()
    torch.save(timm.create_model("nfnet_mini").state_dict(), source)
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(checkpoint(DEMO).file_path, weights / "model.safetensors")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    return {"SRC": source, "W": weights, "FULL": full, "TMP": tmp_path}


def _argv(argv, files):
    """``$SRC``/``$W``/``$FULL`` become those paths, ``{TMP}`` the test's folder."""
    return [str(files[a[1:]]) if a.startswith("$") else a.replace("{TMP}", str(files["TMP"])) for a in argv]


CONVERT_ERRORS = [  # (argv, a fragment of the one line)
    (["{TMP}/missing.pth", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "{TMP}/o"], "does not exist"),
    (["$W", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "{TMP}/o"], "not a file"),
    (["$SRC", "--format", "ws-pth", "--out", "{TMP}/o"], "--name"),
    (["$SRC", "--name", "nope.x", "--out", "{TMP}/o"], "neither a tag"),
    (["$SRC", "--name", "nfnet_mini", "--out", "{TMP}/o"], "source format is not known"),
    (["$SRC", "--name", "nfnet_mini", "--format", "zip", "--out", "{TMP}/o"], "--format"),
    (["$SRC", "--name", "nfnet_mini", "--format", "ws-pth"], "--out"),
    (["$SRC", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "$SRC"], "is a file"),
    (["$SRC", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "{TMP}/release"], "apart from it"),
    (["$SRC", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "{TMP}"], "apart from it"),
    (["$SRC", "--name", "nfnet_mini", "--format", "ws-pth", "--out", "$FULL"], "already holds files"),
    (["$SRC", "--name", "nfnet_f0.dm_in1k", "--out", "{TMP}/o"], "md5"),  # not DeepMind's file
    (["$SRC", "--name", "resnet50_gn_ws", "--format", "ws-pth", "--out", "{TMP}/o"], "does not fit"),
]

PUBLISH_ERRORS = [
    (["{TMP}/missing", "--name", DEMO, "--out", "{TMP}/o", "--dry-run"], "does not exist"),
    (["$SRC", "--name", DEMO, "--out", "{TMP}/o", "--dry-run"], "not a folder"),
    (["$FULL", "--name", DEMO, "--out", "{TMP}/o", "--dry-run"], "holds no model.safetensors"),
    (["$W", "--out", "{TMP}/o", "--dry-run"], "--name"),
    (["$W", "--name", "nope.x", "--out", "{TMP}/o", "--dry-run"], "not a tag of the nfzoo manifest"),
    (["$W", "--name", "nfnet_mini", "--out", "{TMP}/o", "--dry-run"], "not a tag of the nfzoo manifest"),
    (["$W", "--name", DEMO, "--dry-run"], "--out"),
    (["$W", "--name", DEMO, "--out", "$SRC", "--dry-run"], "is a file"),
    (["$W", "--name", DEMO, "--out", "$W", "--dry-run"], "apart from it"),
    (["$W", "--name", DEMO, "--out", "{TMP}/weights/hub", "--dry-run"], "apart from it"),
    (["$W", "--name", DEMO, "--out", "{TMP}", "--dry-run", "--overwrite"], "apart from it"),
    (["$W", "--name", DEMO, "--out", "$FULL", "--dry-run"], "already holds files"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--repo", "not a repo"], "--repo"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--repo", "a/b/c"], "--repo"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "90", "x", "setup"], "not a number"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "nan", "95", "setup"], "not a finite number"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "90", "101", "setup"], "top-5"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "-1", "95", "setup"], "top-1"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "95", "90", "setup"], "top-1 <= top-5"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "90", "95", " "], "setup"),
    (["$W", "--name", DEMO, "--out", "{TMP}/o", "--measured", "90", "95"], "--measured"),
]


def _untouched(files):
    return sorted((str(p), p.read_bytes() if p.is_file() else None) for p in files["TMP"].rglob("*"))


@pytest.mark.parametrize("argv, expect", CONVERT_ERRORS, ids=[" ".join(a) for a, _ in CONVERT_ERRORS])
def test_convert_bad_argument_is_one_line(files, capsys, argv, expect):
    before = _untouched(files)
    assert_one_line_error(convert_cli.main, _argv(argv, files), capsys, expect)
    assert _untouched(files) == before


@pytest.mark.parametrize("argv, expect", PUBLISH_ERRORS, ids=[" ".join(a) for a, _ in PUBLISH_ERRORS])
def test_publish_bad_argument_is_one_line(files, capsys, argv, expect):
    before = _untouched(files)
    assert_one_line_error(publish_cli.main, _argv(argv, files), capsys, expect)
    assert _untouched(files) == before


def test_convert_then_publish_with_overwrite_keeps_other_files(files, capsys):
    out = files["FULL"]
    assert convert_cli.main([str(files["SRC"]), "--name", "nfnet_mini", "--format", "ws-pth", "--out", str(out),
                             "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["conversion.json", "mine.txt", "model.safetensors"]
    hub = files["TMP"] / "hub"
    assert publish_cli.main([str(files["W"]), "--name", DEMO, "--out", str(hub), "--dry-run",
                             "--measured", "90", "99", "nfzoo harness"]) == 0
    assert "| measured (nfzoo harness) | 90.00 | 99.00 |" in (hub / "README.md").read_text()


def test_convert_on_a_full_disk_is_one_line_naming_the_file(files, capsys, monkeypatch):
    real_open = open

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_files, "open", full, raising=False)
    out = files["TMP"] / "o"
    line = assert_one_line_error(convert_cli.main, [str(files["SRC"]), "--name", "nfnet_mini", "--format", "ws-pth",
                                                     "--out", str(out)], capsys, "no space left on the device")
    assert str(out / "model.safetensors") in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("tool", ["convert", "publish"])
def test_a_file_size_limit_is_one_line_naming_the_path_and_leaves_nothing(files, tool):
    """A real EFBIG: the tool runs under RLIMIT_FSIZE smaller than the weights (Python ignores SIGXFSZ)."""
    out = files["TMP"] / "o"
    argv = ([str(files["SRC"]), "--name", "nfnet_mini", "--format", "ws-pth", "--out", str(out)] if tool == "convert"
            else [str(files["W"]), "--name", DEMO, "--out", str(out), "--dry-run"])
    code = ("import resource, runpy, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            f"sys.argv = [{str(REPO / 'weights' / f'{tool}.py')!r}] + sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "grew past the largest size allowed" in lines[0] and str(out) in lines[0]
    assert not out.exists() or list(out.iterdir()) == []
