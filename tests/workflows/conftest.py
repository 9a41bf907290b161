"""Fixtures of the Deploy tests: the separate virtual environment that holds the MONAI Deploy SDK."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deploy_python() -> Path:
    """The deploy venv's interpreter: built from PyPI on first use (~30 s), then reused (stamp file).

    Location: ``$MEDFCN_DEPLOY_VENV`` or ``~/.cache/medfcn-deploy-venv``; see workflows/deploy_venv.py.
    """
    sys.path.insert(0, str(REPO / "workflows"))
    try:
        from deploy_venv import ensure_deploy_venv
    finally:
        sys.path.remove(str(REPO / "workflows"))
    return ensure_deploy_venv()
