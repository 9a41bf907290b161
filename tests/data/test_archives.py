"""Zip archives as input: found like folders, bad archives reported in one line, temp folders removed."""

from __future__ import annotations

import gc
import os
import shutil
import struct
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfcn.data.archives import ArchiveError, extract_zip
from medfcn.data.discovery import find_cases
from medfcn.data.synthetic import make_phantom, write_dicom_series


def _series(folder: Path, n: int = 6, seed: int = 0) -> list[Path]:
    ph = make_phantom((20, 18, n), spacing=(1.5, 1.5, 3.0), seed=seed, noise_hu=0.0)
    return write_dicom_series(ph.image, ph.affine, folder, seed=seed)


def _zip(path: Path, members: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in members.items():
            if isinstance(src, bytes):
                z.writestr(name, src)
            else:
                z.write(src, name)
    return path


pytestmark = pytest.mark.usefixtures("private_tempdir")  # temp-folder checks see this test's files only


def _medfcn_temps() -> set[str]:
    import tempfile

    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("medfcn-zip-")}


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    files = _series(src / "ct", seed=3)
    img = nib.Nifti1Image(np.zeros((8, 9, 7), np.int16), np.diag([1.5, 1.5, 2.0, 1.0]))
    nib.save(img, src / "scan.nii.gz")
    root = tmp_path / "in"
    root.mkdir()
    members: dict[str, Path | bytes] = {f"DICOM/S1/{f.name}": f for f in files}
    members["nifti/scan.nii.gz"] = src / "scan.nii.gz"
    members["README.txt"] = b"exported by a PACS"
    members["../escape.txt"] = b"zip slip"
    _zip(root / "study.zip", members)
    return {"root": root, "zip": root / "study.zip", "files": files[0].parent}


def test_zip_cases_skips_and_cleanup(study: dict[str, Path]) -> None:
    before = _medfcn_temps()
    snapshot = study["zip"].read_bytes()
    report = find_cases(study["root"])
    rows = sorted((c.source, c.kind, c.n_slices) for c in report.cases)
    assert rows == [("study.zip/DICOM/S1", "dicom", 6), ("study.zip/nifti/scan.nii.gz", "nifti", 7)]
    assert sorted((s.path, s.reason) for s in report.skipped) == [
        ("study.zip/../escape.txt", "unsafe path in zip archive (absolute or '..'): not extracted"),
        ("study.zip/README.txt", "not a DICOM or image file"),
    ]
    # the same series id as the unzipped series: ids come from the SeriesInstanceUID
    [plain] = find_cases(study["files"]).cases
    assert {c.id for c in report.cases if c.kind == "dicom"} == {plain.id}
    [tree] = report.temporary
    assert tree.path.is_dir() and all(p.is_file() for c in report.cases for p in c.paths)
    assert not (study["root"].parent / "escape.txt").exists()
    report.close()
    assert not tree.path.exists() and _medfcn_temps() == before
    assert study["zip"].read_bytes() == snapshot  # the input is only read


def test_zip_given_directly_and_without_suffix(study: dict[str, Path], tmp_path: Path) -> None:
    with find_cases(study["zip"]) as report:
        assert sorted(c.source for c in report.cases) == ["study.zip/DICOM/S1", "study.zip/nifti/scan.nii.gz"]
    noext = tmp_path / "export"
    noext.mkdir()
    shutil.copy(study["zip"], noext / "EXPORT0001")
    with find_cases(noext) as report:
        assert sorted(c.source for c in report.cases) == [
            "EXPORT0001/DICOM/S1",
            "EXPORT0001/nifti/scan.nii.gz",
        ]


def test_temp_folder_removed_when_report_is_dropped(study: dict[str, Path]) -> None:
    before = _medfcn_temps()
    report = find_cases(study["root"])
    path = report.temporary[0].path
    assert path.is_dir()
    del report
    gc.collect()
    assert not path.exists() and _medfcn_temps() == before


def test_archive_without_scans_is_removed_at_once(tmp_path: Path) -> None:
    before = _medfcn_temps()
    _zip(tmp_path / "notes.zip", {"a.txt": b"x"})
    report = find_cases(tmp_path)
    assert report.cases == [] and report.temporary == []
    assert [(s.path, s.reason) for s in report.skipped] == [("notes.zip/a.txt", "not a DICOM or image file")]
    assert _medfcn_temps() == before


def _encrypted(path: Path) -> Path:
    """A zip whose one member has the 'encrypted' flag set (what any password-protected zip has)."""
    _zip(path, {"IM0001": b"\0" * 200})
    data = bytearray(path.read_bytes())
    data[6:8] = struct.pack("<H", struct.unpack("<H", data[6:8])[0] | 0x1)  # local header flags
    central = data.find(b"PK\x01\x02")
    data[central + 8 : central + 10] = struct.pack(
        "<H", struct.unpack("<H", data[central + 8 : central + 10])[0] | 0x1
    )
    path.write_bytes(bytes(data))
    return path


def test_bad_archives_one_line_each(tmp_path: Path) -> None:
    before = _medfcn_temps()
    root = tmp_path / "in"
    _series(root / "good", seed=5)
    (root / "fake.zip").write_bytes(b"this is not a zip archive")
    _encrypted(root / "secret.zip")
    _zip(root / "empty.zip", {})
    good = _zip(tmp_path / "ok.zip", {"x/a.nii.gz": b"\x1f\x8b" + b"\0" * 64})
    data = bytearray(good.read_bytes())
    data[data.find(b"PK\x01\x02") - 20] ^= 0xFF  # damage the compressed member
    (root / "corrupt.zip").write_bytes(bytes(data))
    report = find_cases(root)
    assert [c.source for c in report.cases] == ["good"]  # the rest of the run goes on
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["fake.zip"] == "not a zip archive (File is not a zip file)"
    assert reasons["secret.zip"] == (
        "encrypted (password-protected) zip archive: extract it with its password first"
    )
    assert reasons["empty.zip"] == "empty zip archive (no files)"
    assert reasons["corrupt.zip"].startswith("corrupt zip archive (")
    assert all("\n" not in r for r in reasons.values())
    report.close()
    assert _medfcn_temps() == before


def test_extract_zip_refuses_more_than_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _zip(tmp_path / "big.zip", {"a.bin": b"\0" * 10_000})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1000))
    with pytest.raises(ArchiveError, match=r"more than the 0\.0 GiB free"):
        extract_zip(path)


def test_nested_zip_is_opened_once_then_reported(study: dict[str, Path], tmp_path: Path) -> None:
    inner = tmp_path / "level2.zip"
    _zip(inner, {"study.zip": study["zip"]})
    outer = tmp_path / "outer"
    outer.mkdir()
    _zip(outer / "level1.zip", {"level2.zip": inner})
    with find_cases(outer) as report:
        assert report.cases == []
        assert [(s.path, s.reason) for s in report.skipped] == [
            (
                "level1.zip/level2.zip/study.zip",
                "zip archive nested 2 deep in zip archives: not opened (extract it first)",
            )
        ]
