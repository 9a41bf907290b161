"""Rules the package keeps about its own shape (issue 13): every module one idea of a few hundred lines,
no module reaching into the package face or into another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medfcn"
MAX_LINES = 500


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str, root: Path) -> str:
    """``medfcn.engine.segmenter`` -> ``medfcn.engine``; top-level modules are the base layer."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (root / parts[-1]).is_dir() else "medfcn"


def _imports(path: Path, root: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every ``from ... import`` in ``path``, relative ones resolved."""
    here = _module_name(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return found


def face_imports(root: Path) -> list[str]:
    """Imports of ``medfcn/__init__.py``'s names from inside the package (``from medfcn import X`` where X
    is not a submodule, or ``import medfcn``)."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for line, module, names in _imports(path, root):
            if module == "medfcn":
                bad = [n for n in names if not ((root / n).is_dir() or (root / f"{n}.py").is_file())] if names else ["*"]
                if bad:
                    offenders.append(f"{path.relative_to(root.parent)}:{line}: from medfcn import {', '.join(bad)}")
    return offenders


def private_imports(root: Path) -> list[str]:
    """``from medfcn.<package>... import _name`` across packages (a package may share its own privates)."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        own = _package_of(_module_name(path, root), root)
        for line, module, names in _imports(path, root):
            if not module.startswith("medfcn.") or _package_of(module, root) == own:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    offenders.append(f"{path.relative_to(root.parent)}:{line}: from {module} import {name}")
    return offenders


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    return [
        f"{p.relative_to(root.parent)}: {n} lines"
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
    ]


def test_nothing_inside_the_package_imports_its_face() -> None:
    assert not face_imports(PACKAGE), "\n".join(face_imports(PACKAGE))


def test_no_module_imports_a_private_name_of_another_package() -> None:
    assert not private_imports(PACKAGE), "\n".join(private_imports(PACKAGE))


def test_no_module_is_longer_than_500_lines() -> None:
    assert not long_modules(PACKAGE), "\n".join(long_modules(PACKAGE))


def test_the_rules_see_offenders(tmp_path: Path) -> None:
    root = tmp_path / "medfcn"
    (root / "engine").mkdir(parents=True)
    (root / "bundle").mkdir()
    (root / "__init__.py").write_text("__version__ = '0'\n")
    (root / "tracking.py").write_text("")
    (root / "bundle" / "__init__.py").write_text("def _helper():\n    pass\n")
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "a.py").write_text(
        "from medfcn import __version__\nfrom medfcn import tracking\nfrom medfcn.bundle import _helper\n"
        "from medfcn.engine.b import _own\nfrom . import b\n" + "x = 1\n" * 600
    )
    (root / "engine" / "b.py").write_text("_own = 1\n")
    assert face_imports(root) == ["medfcn/engine/a.py:1: from medfcn import __version__"]
    assert private_imports(root) == ["medfcn/engine/a.py:3: from medfcn.bundle import _helper"]
    assert long_modules(root) == ["medfcn/engine/a.py: 605 lines"]
