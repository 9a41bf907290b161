"""``medfcn infer``: exit codes and one-line messages (typer CliRunner)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _inference_support import copy_bundle

from medfcn.cli.main import app
from medfcn.data.synthetic import make_phantom
from medfcn.engine.inference import Segmenter

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_bundle(tmp_path_factory.mktemp("bundle") / "liver")


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(2):
        ph = make_phantom((32, 30, 12), seed=20 + i)
        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(root / f"ct{i}.nii.gz"))
    (root / "notes.txt").write_text("junk\n")
    return root


def _infer(bundle: Path, scans: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = [
        "infer",
        "--bundle",
        str(bundle),
        "--input",
        str(scans),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    return runner.invoke(app, [*args, *extra])


def test_success_and_resume(bundle: Path, scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _infer(bundle, scans, out)
    assert result.exit_code == 0, result.output
    assert (out / "ct0" / "mask.nii.gz").is_file() and (out / "summary.csv").is_file()
    again = _infer(bundle, scans, out)
    assert again.exit_code == 0
    assert "earlier run" in (out / "summary.csv").read_text()


def test_partial_failure_exits_3(bundle: Path, scans: Path, tmp_path: Path) -> None:
    nib.save(
        nib.Nifti1Image(np.zeros((12, 12, 8, 2), np.float32), np.eye(4)), str(scans / "two_phase.nii.gz")
    )
    result = _infer(bundle, scans, tmp_path / "out")
    assert result.exit_code == 3, result.output
    assert "1 case(s) failed" in result.output and "expects 1 input channel" in result.output
    assert not (tmp_path / "out" / "two_phase").exists()


def test_usage_errors_exit_2(bundle: Path, scans: Path, tmp_path: Path) -> None:
    missing = runner.invoke(
        app,
        [
            "infer",
            "--bundle",
            str(bundle),
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
        ],
    )
    flat = " ".join(missing.output.replace("│", " ").split())  # rich wraps usage errors in a box
    assert missing.exit_code == 2 and "does not exist" in flat
    inside = _infer(bundle, scans, scans / "results")
    assert inside.exit_code == 2 and "inside --input" in inside.output
    assert not (scans / "results").exists()
    assert runner.invoke(app, ["infer", "--help"]).exit_code == 0


def test_nothing_could_run_exits_1(bundle: Path, scans: Path, tmp_path: Path) -> None:
    empty = copy_bundle(tmp_path / "untrained", weights=False)
    result = _infer(empty, scans, tmp_path / "out")
    assert result.exit_code == 1 and "error:" in result.output and "has no weights" in result.output
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    result = _infer(bundle, junk, tmp_path / "out2")
    assert result.exit_code == 1 and "no scans found" in result.output
    assert Segmenter  # the CLI wraps the library's Segmenter/segment_folder
