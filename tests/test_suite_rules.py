"""Rules the test suite keeps about itself (a broken medfcn module must fail the suite, not skip it)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _importorskip_targets(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_no_importorskip_of_medfcn_itself() -> None:
    """``pytest.importorskip("medfcn....")`` turns an ImportError in our own code into a skip; optional
    third-party packages may be skipped on, medfcn's modules must be imported plainly."""
    offenders = [
        f"{path.relative_to(TESTS)}:{line}: importorskip({name!r})"
        for path in sorted(TESTS.rglob("*.py"))
        for line, name in _importorskip_targets(path)
        if name == "medfcn" or name.startswith("medfcn.")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_rule_sees_an_offender(tmp_path: Path) -> None:
    sample = tmp_path / "test_x.py"
    sample.write_text('import pytest\nmod = pytest.importorskip("medfcn.engine.training")\n', encoding="utf-8")
    assert _importorskip_targets(sample) == [(2, "medfcn.engine.training")]


def _installs(path: Path) -> list[int]:
    """Lines where a test builds an environment or runs ``pip install`` (``[..., "pip", "install", ...]``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("ensure_deploy_venv", "EnvBuilder"):
                lines.append(node.lineno)
        elif isinstance(node, ast.List):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if "pip" in words and "install" in words:
                lines.append(node.lineno)
    return sorted(lines)


def test_no_test_installs_anything() -> None:
    """Installs belong to .ci/run (cached), never to a test run: they cost minutes and need PyPI."""
    offenders = [
        f"{path.relative_to(TESTS)}:{line}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != Path(__file__).name
        for line in _installs(path)
    ]
    assert not offenders, offenders


def test_install_rule_sees_an_offender(tmp_path: Path) -> None:
    sample = tmp_path / "test_y.py"
    sample.write_text(
        "import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'pip', 'install', 'x'])\n"
        "from deploy_venv import ensure_deploy_venv\nensure_deploy_venv()\n",
        encoding="utf-8",
    )
    assert _installs(sample) == [2, 4]


def test_ci_prints_the_slowest_tests_and_installs_before_pytest() -> None:
    ci = (TESTS.parent / ".ci" / "run").read_text(encoding="utf-8")
    pytest_at = ci.index("python -m pytest")
    assert "--durations=15" in ci[pytest_at:].splitlines()[0]
    for install in ("workflows/deploy_venv.py", "pip install -q dcmqi", "apt-get install -y -qq dicom3tools dcmtk"):
        assert -1 < ci.find(install) < pytest_at, install
