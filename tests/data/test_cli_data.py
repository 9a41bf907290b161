"""``medfcn data synth|check|download`` through the real CLI (typer's CliRunner): exit codes and messages."""

from __future__ import annotations

import json
import socket
import tarfile
from pathlib import Path

import monai.apps.utils  # noqa: F401  (MONAI binds its loggers to sys.stdout on import: do it outside CliRunner)
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medfcn.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from medfcn.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["synth", "check", "download"])
def test_help(command: str) -> None:
    result = runner.invoke(app, ["data", command, "--help"])
    assert result.exit_code == EXIT_OK, result.output
    assert "Usage: medfcn data" in result.output


def test_synth_then_check(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = [
        "data",
        "synth",
        "--output",
        str(out),
        "--num-train",
        "3",
        "--num-test",
        "1",
        "--shape",
        "20",
        "22",
        "10",
    ]
    result = runner.invoke(app, [*args, "--seed", "4", "--dicom", "--quiet"])
    assert result.exit_code == EXIT_OK, result.output
    assert f"wrote 3 training and 1 test cases to {out}" in result.output
    assert "dicom/" in result.output
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["numTraining"], meta["numTest"]) == (3, 1)
    assert nib.load(out / "imagesTr" / "liver_002.nii.gz").shape == (20, 22, 10)
    assert len(list((out / "dicom" / "liver_003").glob("*.dcm"))) == 10

    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    for text in (
        "SyntheticLiver",
        "median spacing (mm)",
        "median shape (voxels)",
        "20 x 22 x 10",
        "p99.5",
        "ok: no problems",
    ):
        assert text in result.output

    result = runner.invoke(app, ["data", "check", str(out), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["fingerprint"]["median_shape"] == [20, 22, 10]
    assert set(report["fingerprint"]["intensity"]["0"]) == {"p0.5", "p50", "p99.5", "mean", "std"}


def test_check_lists_problems_and_fails(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert (
        runner.invoke(
            app,
            [
                "data",
                "synth",
                "-o",
                str(out),
                "--num-train",
                "2",
                "--num-test",
                "0",
                "--shape",
                "16",
                "16",
                "8",
                "-q",
            ],
        ).exit_code
        == 0
    )
    (out / "labelsTr" / "liver_000.nii.gz").unlink()
    label = nib.load(out / "labelsTr" / "liver_001.nii.gz")
    data = np.asanyarray(label.dataobj).copy()
    data[1, 1, 1] = 7
    nib.save(nib.Nifti1Image(data, label.affine), out / "labelsTr" / "liver_001.nii.gz")

    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == EXIT_FAILED
    assert "problem: labelsTr/liver_000.nii.gz: label file is missing" in result.output
    assert "problem: labelsTr/liver_001.nii.gz: label values [7] are not declared" in result.output
    assert f"error: 2 problem(s) found in {out}" in result.stderr


def test_check_missing_dataset_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "Task03_Liver")])
    assert result.exit_code == EXIT_FAILED
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no dataset at {tmp_path / 'Task03_Liver'}")
    assert "medfcn data synth" in lines[0] and "medfcn data download Task03_Liver" in lines[0]
    assert "Traceback" not in result.output


def test_synth_refuses_a_foreign_dataset_and_bad_options(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Task03_Liver", "training": []}))
    result = runner.invoke(app, ["data", "synth", "-o", str(tmp_path), "-q"])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.startswith("error: ") and "refusing to overwrite" in result.stderr
    result = runner.invoke(app, ["data", "synth", "-o", str(tmp_path / "x"), "--num-train", "0"])
    assert result.exit_code == EXIT_USAGE
    result = runner.invoke(app, ["data", "synth", "-o", str(tmp_path / "x"), "--shape", "4", "16", "16"])
    assert result.exit_code == EXIT_USAGE


def test_download_from_a_local_copy(tmp_path: Path) -> None:
    assert (
        runner.invoke(
            app,
            [
                "data",
                "synth",
                "-o",
                str(tmp_path / "src" / "Task98_Local"),
                "--num-train",
                "1",
                "--num-test",
                "0",
                "--shape",
                "12",
                "12",
                "8",
                "-q",
            ],
        ).exit_code
        == 0
    )
    archive = tmp_path / "Task98_Local.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "Task98_Local", arcname="Task98_Local")
    out = tmp_path / "data"
    result = runner.invoke(
        app, ["data", "download", "Task98_Local", "--output", str(out), "--url", archive.as_uri(), "-q"]
    )
    assert result.exit_code == EXIT_OK, result.output
    assert f"Task98_Local ready at {out / 'Task98_Local'} (1 training, 0 test cases)" in result.output
    assert (out / "Task98_Local" / "labelsTr" / "liver_000.nii.gz").is_file()


def test_download_offline_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Task03_Liver.tar"
    result = runner.invoke(app, ["data", "download", "Task03_Liver", "-o", str(tmp_path), "--url", url, "-q"])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.startswith(f"error: could not download Task03_Liver from {url}: ")
    assert "check your network or download it by hand and pass --data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- scan


@pytest.fixture
def scan_folder(tmp_path: Path) -> dict[str, object]:
    from medfcn.data.synthetic import make_phantom, write_dicom_series

    root = tmp_path / "scans"
    ph = make_phantom((20, 18, 6), spacing=(0.9, 0.9, 2.5), seed=1, orientation="lps", noise_hu=0.0)
    files = write_dicom_series(
        ph.image, ph.affine, root / "study" / "ct", seed=1, series_description="portal"
    )
    write_dicom_series(ph.image, ph.affine, root / "study" / "mr", seed=2, modality="MR")
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 8), np.int16), np.eye(4)), str(root / "case 01.nii.gz"))
    (root / "notes.txt").write_text("junk\n")
    import pydicom

    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    import hashlib

    return {"root": root, "ct_id": "s-" + hashlib.sha1(uid.encode()).hexdigest()[:12]}


def test_scan_help() -> None:
    result = runner.invoke(app, ["data", "scan", "--help"])
    assert result.exit_code == EXIT_OK, result.output
    assert "Usage: medfcn data scan" in result.output and "--json" in result.output


def test_scan_prints_cases_and_skips(scan_folder: dict[str, object]) -> None:
    result = runner.invoke(app, ["data", "scan", str(scan_folder["root"])])
    assert result.exit_code == EXIT_OK, result.output
    for text in ("3 scan(s) in", str(scan_folder["ct_id"]), "case_01", "study/ct", "CT", "MR", "20 x 18 x 6"):
        assert text in result.output, text
    assert "1 skipped" in result.output and "notes.txt" in result.output
    assert "not a DICOM or image file" in result.output


def test_scan_json_and_filters(scan_folder: dict[str, object]) -> None:
    root = str(scan_folder["root"])
    result = runner.invoke(app, ["data", "scan", root, "--json"])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    assert report["root"] == root
    rows = {
        c["id"]: (c["kind"], c["modality"], c["n_slices"], c["shape"], c["source"]) for c in report["cases"]
    }
    assert rows == {
        "case_01": ("nifti", None, 8, [12, 10, 8], "case 01.nii.gz"),
        scan_folder["ct_id"]: ("dicom", "CT", 6, [20, 18, 6], "study/ct"),
        next(i for i in rows if i.startswith("s-") and i != scan_folder["ct_id"]): (
            "dicom",
            "MR",
            6,
            [20, 18, 6],
            "study/mr",
        ),
    }
    assert report["skipped"] == [{"path": "notes.txt", "reason": "not a DICOM or image file"}]

    result = runner.invoke(app, ["data", "scan", root, "--json", "--modality", "CT", "--min-slices", "7"])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    assert [c["id"] for c in report["cases"]] == ["case_01"]
    assert {(s["path"], s["reason"]) for s in report["skipped"]} == {
        ("notes.txt", "not a DICOM or image file"),
        ("study/ct", "only 6 slices (< min_slices 7)"),
        ("study/mr", "modality MR filtered out (--modality CT)"),
    }
    result = runner.invoke(app, ["data", "scan", root, "--json", "--series-description", "^portal$"])
    assert sorted(c["id"] for c in json.loads(result.stdout)["cases"]) == sorted(
        ["case_01", scan_folder["ct_id"]]
    )


def test_scan_without_scans_fails_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("junk\n")
    result = runner.invoke(app, ["data", "scan", str(tmp_path), "--json"])
    assert result.exit_code == EXIT_FAILED
    assert json.loads(result.stdout)["cases"] == []  # the report still comes out, as valid JSON
    assert result.stderr.strip() == f"error: no scans found in {tmp_path} (1 item(s) skipped)"
    result = runner.invoke(app, ["data", "scan", str(tmp_path), "--series-description", "(["])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.startswith("error: invalid series description pattern")
    result = runner.invoke(app, ["data", "scan", str(tmp_path / "nowhere")])
    assert result.exit_code == EXIT_USAGE
