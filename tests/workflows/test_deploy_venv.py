"""The Deploy SDK stays out of the main environment and in its own venv, which reuses medfcn's packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.xdist_group("deploy")


def test_core_package_does_not_import_the_sdk() -> None:
    probe = (
        "import sys, monai, medfcn.cli.main, medfcn.bundle.export; "
        "sys.exit('monai.deploy' in sys.modules or 'holoscan' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], timeout=300).returncode == 0


def test_deploy_venv_has_the_sdk_and_the_parent_packages(deploy_python: Path) -> None:
    import monai
    import torch

    probe = (
        "import monai, monai.deploy, torch, medfcn, highdicom; "
        "print(monai.__version__, torch.__version__, medfcn.__file__, monai.deploy.__version__)"
    )
    result = subprocess.run([str(deploy_python), "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    monai_version, torch_version, medfcn_file, sdk_version = result.stdout.split()
    assert monai_version == monai.__version__ and torch_version == torch.__version__
    assert (
        Path(medfcn_file).resolve() == (REPO / "medfcn" / "__init__.py").resolve()
        or "site-packages" in medfcn_file
    )
    assert int(sdk_version.split(".")[0]) >= 3
