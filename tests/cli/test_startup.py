"""Start-up: ``medfcn --help`` loads neither PyTorch nor MONAI, ``medfcn info`` not MONAI (import checks in a
fresh interpreter; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
sys.argv = ["medfcn", *sys.argv[1:]]
from medfcn.cli.main import app
try:
    app()
except SystemExit:
    pass
heavy = ("torch", "monai", "numpy", "mlflow", "pydicom", "highdicom", "SimpleITK", "nibabel")
print(json.dumps({name: name in sys.modules for name in heavy}))
"""


def _loaded(*args: str) -> dict[str, bool]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("infer", "--help"), ("train", "--help"), ("--version",)])
def test_help_imports_neither_torch_nor_monai(args: tuple[str, ...]) -> None:
    loaded = _loaded(*args)
    assert not any(loaded.values()), loaded


def test_info_imports_torch_but_not_monai() -> None:
    loaded = _loaded("info")
    assert loaded["torch"] and not loaded["monai"], loaded
