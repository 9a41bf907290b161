"""``medfcn infer`` output options from the command line: --classes, --per-class, labels.json; zipped input."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _inference_support import copy_bundle

from medfcn.cli.main import app
from medfcn.data.synthetic import make_phantom

runner = CliRunner()


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
        "-q",
    ]
    return runner.invoke(app, [*args, *extra])


@pytest.fixture
def zipped(tmp_path: Path) -> Path:
    ph = make_phantom((30, 28, 10), seed=31)
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(tmp_path / "ct.nii.gz"))
    root = tmp_path / "in"
    root.mkdir()
    with zipfile.ZipFile(root / "export.zip", "w") as z:
        z.write(tmp_path / "ct.nii.gz", "scans/ct.nii.gz")
    return root


def test_unknown_class_fails_before_weights_are_read(zipped: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "liver", weights=False)  # no weights: loading them would fail otherwise
    result = _infer(bundle, zipped, tmp_path / "out", "--classes", "liver,spleen")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "error: --classes liver,spleen: unknown class 'spleen'; the liver bundle has liver, tumour"
    )
    assert not (tmp_path / "out").exists()


def test_classes_and_per_class_from_a_zip(zipped: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tmp_path / "liver")
    out = tmp_path / "out"
    result = _infer(bundle, zipped, out, "--classes", "tumour", "--per-class", "--no-previews")
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "labels.json").read_text())
    assert list(labels["classes"]) == ["2"] and labels["classes"]["2"]["name"] == "tumour"
    mask = np.asarray(nib.load(out / "ct" / "mask.nii.gz").dataobj)
    assert set(np.unique(mask).tolist()) <= {0, 2}
    assert sorted(p.name for p in (out / "ct").glob("mask_*.nii.gz")) == ["mask_tumour.nii.gz"]
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].endswith(",tumour_ml") and ",export.zip/scans/ct.nii.gz," in rows[1]
