"""Create (or reuse) the virtual environment that runs the MONAI Deploy app, apart from the main one.

Installing ``monai-deploy-app-sdk`` puts ``monai/deploy`` inside the ``monai`` package, and MONAI's
``__init__`` then imports it on every ``import monai`` (with holoscan, cupy, ...). So the SDK lives in
its own environment, which borrows everything else (torch, monai's dependencies, medfcn itself,
highdicom, ...) from the environment that creates it:

1. ``python -m venv DIR`` (no pip upgrade, no system site-packages: the parent may itself be a venv).
2. ``DIR/.../site-packages/zz_medfcn_parent.pth`` runs ``site.addsitedir(...)`` on the parent's
   site-packages, *after* the venv's own, so the parent's ``.pth`` hooks (an editable medfcn install)
   work too and the venv's own packages win.
3. ``pip install --no-deps`` MONAI at the parent's exact version and ``filelock`` into the venv: MONAI
   so that ``monai/deploy`` lands in a ``monai`` package of the venv (a package split across two
   site-packages does not see the other half), ``filelock`` because holoscan's ``.pth`` imports it
   before the parent's packages are on ``sys.path``.
4. ``pip install monai-deploy-app-sdk`` (the ``deploy`` extra of pyproject.toml).

A stamp file records what it was built from; a later call with the same inputs reuses it (one
``python -c`` check). Measured here (2026-11-25, SDK 4.0.0, holoscan-cu13 4.6.0): 25 s to build from
PyPI with nothing cached, 474 MB on disk.

``.ci/run`` builds it (cached under ``~/.cache/medfcn-ci``) before pytest starts; the tests only look it
up with :func:`find_deploy_venv` and never install anything.

Usage::

    python workflows/deploy_venv.py [DIR]      # build or reuse; prints the venv's python
    python workflows/deploy_venv.py --check    # exit 1 (and say why) unless an up-to-date venv is there

``DIR`` defaults to ``$MEDFCN_DEPLOY_VENV``, else ``~/.cache/medfcn-ci/deploy-venv``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import site
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

__all__ = ["DEFAULT_VENV", "SDK_REQUIREMENT", "ensure_deploy_venv", "find_deploy_venv", "venv_python"]

DEFAULT_VENV = Path(
    os.environ.get("MEDFCN_DEPLOY_VENV") or Path.home() / ".cache" / "medfcn-ci" / "deploy-venv"
)


def _sdk_requirement() -> str:
    """The ``deploy`` extra of pyproject.toml (one source of truth), or its value when that is unreadable."""
    try:
        import tomllib

        project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
            "project"
        ]
        (requirement,) = [r for r in project["optional-dependencies"]["deploy"] if "monai-deploy" in r]
        return str(requirement)
    except (ImportError, OSError, KeyError, ValueError):
        return "monai-deploy-app-sdk>=3.0"


SDK_REQUIREMENT = _sdk_requirement()


def venv_python(path: Path) -> Path:
    """The interpreter of the virtual environment at ``path``."""
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _venv_site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _parent_site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _stamp() -> dict:
    return {
        "parent_python": sys.executable,
        "parent_site": _parent_site_dirs(),
        "monai": version("monai"),
        "filelock": version("filelock"),
        "sdk": SDK_REQUIREMENT,
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # pytest-xdist workers may ask for the venv at the same time; one builds, the others wait.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _works(python: Path, *, full: bool = False) -> bool:
    if not python.is_file():
        return False
    # The full probe imports holoscan (seconds); the quick one only finds the packages.
    probe = (
        "import monai.deploy.operators, holoscan, medfcn, torch"
        if full
        else "import importlib.util as u, sys, sysconfig, pathlib; "
        "sys.exit(not (all(u.find_spec(m) for m in ('holoscan', 'medfcn', 'torch', 'highdicom')) and "
        "(pathlib.Path(sysconfig.get_paths()['purelib']) / 'monai' / 'deploy' / '__init__.py').is_file()))"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def _pip(python: Path, *args: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}
    cmd = [str(python), "-m", "pip", "install", "--no-cache-dir", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def find_deploy_venv(path: Path = DEFAULT_VENV) -> tuple[Path | None, str]:
    """``(python, "")`` when an up-to-date deploy venv is at ``path``, else ``(None, why not)``; builds
    nothing (what the tests call)."""
    path = Path(path).expanduser().resolve()
    python = venv_python(path)
    stamp_file = path / "medfcn-deploy-stamp.json"
    build = f"build it with `python workflows/deploy_venv.py {path}` (.ci/run does)"
    if not stamp_file.is_file():
        return None, f"no deploy venv at {path}; {build}"
    try:
        stamp = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp != _stamp():
        return None, f"the deploy venv at {path} was built for another environment; {build}"
    if not _works(python):
        return None, f"the deploy venv at {path} lacks the SDK, holoscan or medfcn; {build}"
    return python, ""


def ensure_deploy_venv(path: Path = DEFAULT_VENV, *, log: bool = True) -> Path:
    """Build the deploy venv at ``path`` unless an up-to-date one is there; return its python.

    Raises:
        RuntimeError: pip failed (the message holds its output); needs PyPI the first time.
    """
    path = Path(path).expanduser().resolve()
    python = venv_python(path)
    stamp_file = path / "medfcn-deploy-stamp.json"
    wanted = _stamp()
    with _locked(path):
        if stamp_file.is_file() and json.loads(stamp_file.read_text()) == wanted and _works(python):
            return python
        start = time.perf_counter()
        venv.EnvBuilder(clear=True, with_pip=True, symlinks=os.name != "nt").create(path)
        site_packages = _venv_site_packages(python)
        lines = "; ".join(f"site.addsitedir({d!r})" for d in wanted["parent_site"])
        (site_packages / "zz_medfcn_parent.pth").write_text(f"import site; {lines}\n")
        _pip(
            python,
            "--no-deps",
            "--ignore-installed",
            f"monai=={wanted['monai']}",
            f"filelock=={wanted['filelock']}",
        )
        _pip(python, SDK_REQUIREMENT)
        if not _works(python, full=True):
            raise RuntimeError(
                f"{path}: built, but `import monai.deploy.operators, holoscan, medfcn` fails there"
            )
        stamp_file.write_text(json.dumps(wanted, indent=2))
        if log:
            print(f"deploy venv built at {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return python


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        found, why = find_deploy_venv(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_VENV)
        print(found or why, file=sys.stdout if found else sys.stderr)
        sys.exit(0 if found else 1)
    print(ensure_deploy_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV))
