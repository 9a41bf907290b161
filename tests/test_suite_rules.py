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
