"""Fixtures of the Deploy tests: the separate virtual environment that holds the MONAI Deploy SDK.

The tests never build it (no pip inside pytest): ``.ci/run`` does, before pytest starts, with
``python workflows/deploy_venv.py``. Outside CI a missing venv skips these tests with the command that
builds it; in CI (``CI=true``) a missing venv fails them, since .ci/run should have built it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deploy_python() -> Path:
    """The deploy venv's interpreter: ``$MEDFCN_DEPLOY_VENV`` or ``~/.cache/medfcn-ci/deploy-venv``."""
    sys.path.insert(0, str(REPO / "workflows"))
    try:
        from deploy_venv import DEFAULT_VENV, find_deploy_venv
    finally:
        sys.path.remove(str(REPO / "workflows"))
    python, why = find_deploy_venv(DEFAULT_VENV)
    if python is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{why} -- .ci/run builds it before pytest")
        pytest.skip(why)
    return python
