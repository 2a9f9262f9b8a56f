"""The package's layout rules, checked on the source (``ast``, nothing imported).

* Module names: no two modules of ``nfzoo`` share a name, or differ only by a trailing ``s``
  (``checkpoint.py`` / ``checkpoints.py``), ``__init__.py`` and ``__main__.py`` excepted: a
  name says what its module holds, once.
* ``nfzoo.weights`` imports nothing from ``nfzoo.models`` nor the package root (``import
  nfzoo``, ``from .. import x``), anywhere in a module, function bodies included: the models
  import the weights, never the reverse; what the weights tools need of a model is passed in or
  comes through timm.
* Private names: in ``nfzoo``, ``benchmarks`` and ``reproduction`` (their ``tests`` folders
  excepted), ``from m import _x``, ``m`` one of these three, is refused for every module ``m``
  other than the importer's own subpackage's ``__init__``; a private module (``_registry``) is
  imported only by the modules of its own subpackage. A name another part needs is made public
  where it is defined. (Third-party private names go through ``nfzoo/timm_private.py``.)
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nfzoo"
PRIVATE_RULE_DIRS = ("nfzoo", "benchmarks", "reproduction")


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts[1:-1]
                  and not p.relative_to(ROOT).parts[0].startswith("."))


def _dotted(path: Path) -> list[str]:
    """``nfzoo/weights/publish.py`` -> ``['nfzoo', 'weights', 'publish']`` (``__init__`` dropped)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """Every import of ``path`` as ``(line, absolute module path, names)``; ``import a.b`` has
    no names, relative imports are resolved against the file's package."""
    package = list(path.relative_to(ROOT).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split("."), []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def weights_violations(modules: list[Path]) -> list[str]:
    """The imports of ``nfzoo.weights`` modules that reach ``nfzoo.models`` or the package root."""
    bad = []
    for path in modules:
        for line, module, names in imports(path):
            reaches = (module[:2] == ["nfzoo", "models"] or module == ["nfzoo"] and (not names or "models" in names
                       or any(not (PACKAGE / f"{n}.py").is_file() and not (PACKAGE / n).is_dir() for n in names)))
            if reaches:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {'.'.join(module)} {names or ''}".strip())
    return bad


def test_weights_imports_nothing_of_the_models_or_the_package_root():
    assert weights_violations(_modules(PACKAGE / "weights")) == []


def name_clashes(modules: list[Path]) -> dict[str, list[str]]:
    """Module names that two modules share, up to a trailing ``s``."""
    by_stem = defaultdict(list)
    for path in modules:
        if path.stem not in ("__init__", "__main__"):
            by_stem[path.stem.removesuffix("s")].append(str(path.relative_to(ROOT)))
    return {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}


def test_no_two_package_modules_share_a_name():
    assert name_clashes(_modules(PACKAGE)) == {}


def private_violations(modules: list[Path]) -> list[str]:
    """Private names imported from another module, and private modules imported from outside
    their subpackage (see the module docstring)."""
    bad = []
    for path in modules:
        own_package = list(path.relative_to(ROOT).parent.parts)
        for line, module, names in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            private_part = next((i for i, part in enumerate(module) if part.startswith("_")
                                 and not part.startswith("__")), None)
            if module[0] not in PRIVATE_RULE_DIRS:  # third-party privates: nfzoo.timm_private's business
                continue
            if private_part is not None and module[:private_part] != own_package:
                bad.append(f"{where} imports the private module {'.'.join(module)}")
            if module != own_package and module != _dotted(path):
                bad += [f"{where} imports {name} from {'.'.join(module)}" for name in names
                        if name.startswith("_") and not name.startswith("__") and name not in _modules_named(module)]
    return bad


def _modules_named(module: list[str]) -> set[str]:
    """The submodules of package ``module`` (``from pkg import _private_module`` is the private
    module rule's business, not the private name rule's)."""
    folder = ROOT.joinpath(*module)
    return {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()} \
        if folder.is_dir() else set()


def test_no_private_names_imported_across_modules():
    modules = [p for folder in PRIVATE_RULE_DIRS for p in _modules(ROOT / folder)]
    assert private_violations(modules) == []
