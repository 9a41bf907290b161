"""medfcn.outputs.case and medfcn.outputs.run: a case folder's life (clear, write, done, read back) and the
run-level files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from medfcn.data.segment_codes import class_table
from medfcn.errors import InputError
from medfcn.outputs.case import (
    CASE_FILES,
    clear_case,
    is_done,
    per_class_file,
    remove_case_outputs,
    result_from_done,
    save_nifti,
    select_classes,
    write_done,
)
from medfcn.outputs.run import CaseResult, RunSummary, write_labels, write_summaries

TABLE = class_table({}, {0: "background", 1: "liver", 2: "liver tumour"})


def test_select_classes_by_name_and_the_one_line_error() -> None:
    assert select_classes(TABLE, None, "liver") == TABLE
    assert sorted(select_classes(TABLE, ["LIVER "], "liver")) == [1]
    with pytest.raises(InputError, match=r"^--classes spleen: unknown class 'spleen'; the liver bundle has liver, liver tumour$"):
        select_classes(TABLE, ["spleen"], "liver")
    assert per_class_file("liver tumour") == "mask_liver_tumour.nii.gz" and per_class_file("..") == "mask_class.nii.gz"


def test_a_case_folder_is_complete_only_once_done_json_is_written(tmp_path: Path) -> None:
    case_dir = tmp_path / "case1"
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    clear_case(case_dir)
    save_nifti(case_dir / CASE_FILES["mask"], np.ones((3, 4, 5), np.uint8), affine)
    (case_dir / CASE_FILES["stats"]).write_text(json.dumps({"classes": {"liver": {"volume_ml": 2.5}}, "flags": ["x"]}))
    assert not is_done(case_dir)
    write_done(case_dir, "case1", 1.23456, {"load": 0.5})
    assert is_done(case_dir)
    done = json.loads((case_dir / CASE_FILES["done"]).read_text())
    assert done["files"] == ["mask.nii.gz", "stats.json"] and done["seconds"] == 1.235
    np.testing.assert_allclose(nib.load(case_dir / CASE_FILES["mask"]).affine, affine)
    row = result_from_done(SimpleNamespace(id="case1", kind="nifti"), "a/ct.nii.gz", case_dir)  # type: ignore[arg-type]
    assert row.kept and row.status == "ok" and row.volumes_ml == {"liver": 2.5} and row.seconds == 1.235
    (case_dir / ".mask.abc.tmp.nii.gz").write_bytes(b"half")  # what an interrupted write leaves
    (case_dir / "notes.txt").write_text("the user's own file")
    clear_case(case_dir)  # a new attempt: done.json first, then medfcn's files and temp files
    assert sorted(p.name for p in case_dir.iterdir()) == ["notes.txt"]
    remove_case_outputs(case_dir)
    assert case_dir.is_dir()  # not empty: the user's file stays
    (case_dir / "notes.txt").unlink()
    remove_case_outputs(case_dir)
    assert not case_dir.exists()


def test_run_files(tmp_path: Path) -> None:
    rows = [
        CaseResult("c1", "c1.nii.gz", "nifti", "ok", volumes_ml={"liver": 1.5}, seconds=2.0),
        CaseResult("c2", "c2", "dicom", "failed", "cannot read c2/"),
        CaseResult("", "notes.txt", "", "skipped", "not a scan"),
    ]
    summary = RunSummary(tmp_path, rows)
    assert (summary.ok, summary.failed, summary.skipped, summary.already_done) == (1, 1, 1, 0)
    write_summaries(tmp_path, rows, {0: "background", 1: "liver"}, {"bundle": {"name": "liver"}})
    table = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in table] == ["ok", "failed", "skipped"] and table[0]["liver_ml"] == "1.500"
    assert json.loads((tmp_path / "summary.json").read_text())["cases"][1]["reason"] == "cannot read c2/"
    assert json.loads((tmp_path / "run.json").read_text()) == {"bundle": {"name": "liver"}}
    write_labels(tmp_path, TABLE, bundle="liver", version="1.0.0")
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["bundle"] == {"name": "liver", "version": "1.0.0"} and sorted(labels["classes"]) == ["1", "2"]
