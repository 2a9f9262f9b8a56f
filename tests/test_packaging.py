"""The package as a user installs it: a wheel and an sdist that ``twine check`` accepts, and a
wheel that runs ``make demo``'s check on its own, with the checkout out of the way."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{shlex.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` (sdist, then a wheel built from it) of a copy of the checkout's files
    (tracked and not ignored, so no build state of the checkout leaks in), offline: no build isolation."""
    source = tmp_path_factory.mktemp("source")
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
    return out


def test_build_gives_a_wheel_and_an_sdist_that_twine_accepts(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert any(f.endswith(".whl") for f in files) and any(f.endswith(".tar.gz") for f in files), files
    result = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_holds_the_manifest_and_the_demo_weights(dist):
    wheel = next(dist.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "nfzoo/weights/manifest.toml" in names
    assert any(n.startswith("nfzoo/weights/demo/") and n.endswith(".safetensors") for n in names), names


def test_the_installed_wheel_runs_the_demo_check(dist, tmp_path):
    """Installed without dependencies (torch and timm are the venv's) into a folder of its own;
    the demo command is the Makefile's, run with that install first on the path."""
    site = tmp_path / "site"
    wheel = next(dist.glob("*.whl"))
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = _run([sys.executable, "-c", "import nfzoo; print(nfzoo.__file__)"], cwd=tmp_path, env=env).stdout
    assert Path(where.strip()).is_relative_to(site), where  # not the checkout's editable install

    plot = tmp_path / "demo.png"
    recipe = _run(["make", "-s", "-n", "-o", ".venv/.installed", "demo", f"DEMO_PLOT={plot}"], cwd=ROOT).stdout
    argv = shlex.split(recipe.replace("\\\n", " "))
    assert Path(argv[0]).name == "nfzoo-validate", argv
    script = site / "bin" / "nfzoo-validate"
    result = _run([sys.executable, str(script), *argv[1:]], cwd=ROOT, env=env)
    assert "all pass" in result.stdout, result.stdout
    assert plot.is_file()
