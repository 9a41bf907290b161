"""``medfcn demo``: README's main job, end to end on the toolkit's own synthetic data."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_readme_quick_start_matches_ci() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(pip install [^\n]+)\n```", readme)
    assert len(commands) == 2, commands
    assert "medfcn demo" in commands[0]
    test_command = commands[1].split("&&")[-1].strip()
    assert test_command in ci, f"README's test command {test_command!r} is not what .ci/run runs"
    assert "--durations=15" in test_command


# Third-party lines a user cannot act on (issue 17): none may reach a command's output.
NOISE = (
    "nvImageCodec",
    "FutureWarning",
    "UserWarning",
    "Logging file is set to",
    "Creating initial MLflow database tables",
    "Updating database tables",
)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """Also the log-noise check of every step a user meets first (data, train, infer), with stdout and
    stderr going to pipes: no third-party noise, no redrawn bars, one line per epoch and per case."""
    out = tmp_path / "demo"
    source = REPO / "bundles" / "liver"
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "medfcn", "demo", "--output", str(out), "--epochs", "3", "--num-train", "4",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    log = result.stdout + result.stderr
    assert not [n for n in NOISE if n in log], log[-5000:]
    assert "\r" not in log, "a progress bar redrew itself into a pipe"
    epochs = [line for line in result.stderr.splitlines() if re.match(r"epoch \d+/3: \d+/\d+ batch", line)]
    assert len(epochs) == 3, result.stderr[-3000:]
    assert len([line for line in result.stderr.splitlines() if ": ok in " in line]) == 4, result.stderr[-3000:]
    for label in ("data:", "training:", "bundle:", "masks:", "report:", "MLflow:"):
        assert label in text, label
    rows = list(csv.DictReader((out / "results" / "summary.csv").open()))
    kinds = sorted(r["kind"] for r in rows if r["status"] == "ok")
    assert kinds == ["dicom", "dicom", "nifti", "nifti"], rows
    for row in rows:
        case = out / "results" / row["id"]
        mask = nib.load(case / "mask.nii.gz")
        assert mask.shape == (64, 64, 48)
        assert (case / "preview.png").is_file() and (case / "stats.json").is_file()
        assert (case / "seg.dcm").is_file() == (row["kind"] == "dicom")
    assert (out / "bundle" / "models" / "model.pt").is_file()
    assert (out / "mlflow.db").is_file()
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before  # the demo trains a copy
