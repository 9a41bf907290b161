"""find_cases: the exact cases and skip reasons of messy folders, read-only, stable PHI-free ids."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medfcn.data.discovery import MIN_SLICES, Case, Skipped, find_cases
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.errors import InputError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _series(folder: Path, n: int = 8, seed: int = 0, **kwargs: object) -> list[Path]:
    ph = make_phantom(
        (20, 18, max(n, 2)), spacing=(0.9, 0.9, 2.5), seed=seed, orientation="lps", noise_hu=0.0
    )
    files = write_dicom_series(ph.image, ph.affine, folder, seed=seed, **kwargs)  # type: ignore[arg-type]
    for f in files[n:]:
        f.unlink()
    return files[:n]


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _sid(path: Path) -> str:
    return "s-" + hashlib.sha1(_uid(path).encode()).hexdigest()[:12]


def _nifti(path: Path, shape: tuple[int, int, int] = (16, 14, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([-0.8, 0.8, 2.0, 1.0])), str(path))
    return path


def _non_image(path: Path, modality: str, sop_class: str) -> Path:
    """A minimal non-image object (SR, RTSTRUCT, SEG ...) with its own series."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, generate_uid(), generate_uid()
    ds.PatientName = "SYNTHETIC^PHANTOM"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mtime (ns) and mode of every file and folder under root (links recorded, not followed)."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                digest = "link:" + os.readlink(p)
            elif p.is_dir():
                digest = "dir"
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def _rows(report: object) -> tuple[list[tuple[object, ...]], list[tuple[str, str]]]:
    cases = [(c.id, c.kind, c.source, c.n_slices, c.modality) for c in report.cases]  # type: ignore[attr-defined]
    skipped = [(s.path, s.reason) for s in report.skipped]  # type: ignore[attr-defined]
    return cases, skipped


# ----------------------------------------------------------------------------------------------- the messy folder


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Issue 3's folder: two DICOM series, a NIfTI, an SR object, a truncated file, a text file, a nested
    subfolder and a series with a missing slice."""
    root = tmp_path_factory.mktemp("messy") / "SCANS"
    ct = _series(root / "study1" / "ct_portal", n=9, seed=1, series_description="portal venous")
    _non_image(root / "study1" / "ct_portal" / "report.dcm", "SR", "1.2.840.10008.5.1.4.1.1.88.11")
    (root / "study1" / "notes.txt").write_text("referral letter\n")
    mr_dir = root / "study2" / "nested" / "deeper" / "mr_t1"
    mr = _series(mr_dir, n=7, seed=2, modality="MR", reverse_instance_numbers=True)
    for f in mr:  # files without extension, as many exports write them
        f.rename(f.with_suffix(""))
    mr = [f.with_suffix("") for f in mr]
    gap = _series(root / "gap", n=8, seed=3)
    gap[3].unlink()
    _nifti(root / "liver.nii.gz")
    donor = _series(root / "_donor", n=1, seed=4)[0]
    raw = donor.read_bytes()
    (root / "broken.dcm").write_bytes(raw[: len(raw) // 3])  # cut inside the header
    shutil.rmtree(root / "_donor")
    return {"root": root, "ct": ct, "mr": mr}


def test_messy_folder_exact_result(messy: dict[str, object]) -> None:
    root: Path = messy["root"]  # type: ignore[assignment]
    ct: list[Path] = messy["ct"]  # type: ignore[assignment]
    mr: list[Path] = messy["mr"]  # type: ignore[assignment]
    before = _snapshot(root)
    report = find_cases(root)
    assert _snapshot(root) == before  # read only: same bytes, same mtimes, no new files

    cases, skipped = _rows(report)
    assert cases == [
        ("liver", "nifti", "liver.nii.gz", 10, None),
        (_sid(ct[0]), "dicom", "study1/ct_portal", 9, "CT"),
        (_sid(mr[0]), "dicom", "study2/nested/deeper/mr_t1", 7, "MR"),
    ]
    assert skipped == [
        ("broken.dcm", "truncated or corrupt DICOM file (header ends before the pixel data)"),
        ("gap", "missing slices: spacing between slices varies 2.50-5.00 mm"),
        ("study1/ct_portal/report.dcm", "SR object (not an image)"),
        ("study1/notes.txt", "not a DICOM or image file"),
    ]
    assert report.root == root
    by_id = {c.id: c for c in report.cases}
    assert by_id["liver"].load_input() == str(root / "liver.nii.gz")
    # DICOM paths are in slice order along the normal, whatever the InstanceNumbers say.
    mr_case = by_id[_sid(mr[0])]
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in mr_case.paths]
    assert z == sorted(z) and len(mr_case.paths) == 7
    assert mr_case.load_input() == [str(p) for p in mr_case.paths]
    assert mr_case.shape == (20, 18, 7) and mr_case.spacing == pytest.approx((0.9, 0.9, 2.5))
    assert by_id[_sid(ct[0])].series_description == "portal venous"


def test_messy_folder_ids_are_stable_and_json_ready(messy: dict[str, object]) -> None:
    root: Path = messy["root"]  # type: ignore[assignment]
    first, second = find_cases(root), find_cases(root)
    assert [c.id for c in first.cases] == [c.id for c in second.cases]
    data = json.loads(json.dumps(first.to_dict()))
    assert data["root"] == str(root)
    assert {c["id"] for c in data["cases"]} == {c.id for c in first.cases}
    assert data["skipped"][0] == {"path": "broken.dcm", "reason": first.skipped[0].reason}
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", c["id"]) for c in data["cases"])


# ----------------------------------------------------------------------------------------------- grouping


def test_one_series_across_folders_is_one_case(tmp_path: Path) -> None:
    files = _series(tmp_path / "dump" / "part1", n=10, seed=5)
    (tmp_path / "dump" / "part2").mkdir()
    for f in files[5:]:
        f.rename(tmp_path / "dump" / "part2" / f.name)
    report = find_cases(tmp_path)
    [case] = report.cases
    assert (case.source, case.n_slices, report.skipped) == ("dump", 10, [])
    assert [p.parent.name for p in case.paths] == ["part1"] * 5 + ["part2"] * 5


def test_several_series_in_one_folder(tmp_path: Path) -> None:
    a = _series(tmp_path / "tmp_a", n=6, seed=6, series_number=1)
    b = _series(tmp_path / "tmp_b", n=7, seed=7, series_number=2, modality="MR")
    flat = tmp_path / "in" / "flat"
    flat.mkdir(parents=True)
    for i, f in enumerate(a + b):  # interleaved file names: grouping must come from the headers
        f.rename(flat / f"{i % 2}_{i:03d}.dcm")
    report = find_cases(tmp_path / "in")
    assert sorted((c.n_slices, c.modality, c.source) for c in report.cases) == [
        (6, "CT", "flat"),
        (7, "MR", "flat"),
    ]
    assert len({c.id for c in report.cases}) == 2 and report.skipped == []


def test_files_without_extension_or_preamble(tmp_path: Path) -> None:
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    files = _series(tmp_path / "tmp", n=6, seed=8)
    raw_dir = tmp_path / "in" / "raw"
    raw_dir.mkdir(parents=True)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        with open(raw_dir / f"{i:08d}", "wb") as fh:  # no extension, no preamble, no file meta
            fp = DicomFileLike(fh)
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_dataset(fp, ds)
    assert (raw_dir / "00000000").read_bytes()[128:132] != b"DICM"
    (raw_dir / "junk").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    report = find_cases(tmp_path / "in")
    [case] = report.cases
    assert (case.n_slices, case.transfer_syntax) == (6, "1.2.840.10008.1.2")
    assert [(s.path, s.reason) for s in report.skipped] == [("raw/junk", "not a DICOM or image file")]
    from monai.transforms import LoadImage

    img = LoadImage(reader="medfcn.data.readers.DicomSeriesReader", image_only=True)(case.load_input())
    assert tuple(img.shape) == (20, 18, 6)


def test_dicomdir_is_not_a_case_and_not_an_error(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    files = _series(tmp_path / "tmp", n=6, seed=9)
    fs = FileSet()
    for f in files:
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    report = find_cases(tmp_path / "cd")
    [case] = report.cases
    assert case.n_slices == 6 and case.id == _sid(files[0]) and report.skipped == []
    # Pointing at the DICOMDIR itself scans the media folder it indexes.
    from_index = find_cases(tmp_path / "cd" / "DICOMDIR")
    assert from_index.root == tmp_path / "cd"
    assert [(c.id, c.source) for c in from_index.cases] == [(case.id, case.source)]


def test_duplicate_copy_of_a_series_is_one_case(tmp_path: Path) -> None:
    files = _series(tmp_path / "in" / "a", n=6, seed=10)
    shutil.copytree(tmp_path / "in" / "a", tmp_path / "in" / "backup")
    report = find_cases(tmp_path / "in")
    [case] = report.cases
    assert case.n_slices == 6 and case.id == _sid(files[0])


# ----------------------------------------------------------------------------------------------- skip reasons


def test_localiser_by_image_type_and_by_description(tmp_path: Path) -> None:
    loc = _series(tmp_path / "in" / "loc", n=3, seed=11)
    for f in loc:
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(f)
    _series(tmp_path / "in" / "topo", n=6, seed=12, series_description="Topogram 0.6 T20s")
    _, skipped = _rows(find_cases(tmp_path / "in"))
    assert skipped == [
        ("loc", "localiser/scout (ImageType LOCALIZER)"),
        ("topo", "localiser/scout (SeriesDescription 'Topogram 0.6 T20s')"),
    ]


def test_min_slices(tmp_path: Path) -> None:
    _series(tmp_path / "short", n=4, seed=13)
    assert MIN_SLICES == 5
    _, skipped = _rows(find_cases(tmp_path))
    assert skipped == [("short", "only 4 slices (< min_slices 5)")]
    assert [c.n_slices for c in find_cases(tmp_path, min_slices=4).cases] == [4]
    with pytest.raises(InputError, match="min_slices must be >= 1"):
        find_cases(tmp_path, min_slices=0)


def test_modality_and_description_filters(tmp_path: Path) -> None:
    _series(tmp_path / "ct", n=6, seed=14, series_description="Abdomen portal 1.0 B30f")
    _series(tmp_path / "mr", n=6, seed=15, modality="MR", series_description="t1_vibe")
    _series(tmp_path / "ct_art", n=6, seed=16, series_description="Abdomen arterial")
    _nifti(tmp_path / "atlas.nii.gz")
    report = find_cases(tmp_path, modality="ct")
    assert sorted(c.source for c in report.cases) == ["atlas.nii.gz", "ct", "ct_art"]  # NIfTI kept
    assert _rows(report)[1] == [("mr", "modality MR filtered out (--modality CT)")]
    report = find_cases(tmp_path, series_description=r"portal|vibe")
    assert sorted(c.source for c in report.cases) == ["atlas.nii.gz", "ct", "mr"]
    assert _rows(report)[1] == [
        ("ct_art", "series description 'Abdomen arterial' does not match --series-description 'portal|vibe'")
    ]
    with pytest.raises(InputError, match="invalid series description pattern"):
        find_cases(tmp_path, series_description="([")


def test_non_image_objects(tmp_path: Path) -> None:
    _non_image(tmp_path / "rt.dcm", "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3")
    _non_image(tmp_path / "seg.dcm", "SEG", "1.2.840.10008.5.1.4.1.1.66.4")
    _non_image(tmp_path / "labelmap.dcm", "SEG", "1.2.840.10008.5.1.4.1.1.66.7")
    _non_image(tmp_path / "pr.dcm", "PR", "1.2.840.10008.5.1.4.1.1.11.1")
    _non_image(tmp_path / "pdf.dcm", "OT", "1.2.840.10008.5.1.4.1.1.104.1")
    _, skipped = _rows(find_cases(tmp_path))
    assert skipped == [
        (
            "labelmap.dcm",
            "Label Map Segmentation object (a segmentation, not an image; medfcn evaluate/train read it as a label)",
        ),
        ("pdf.dcm", "Encapsulated PDF object (not an image)"),
        ("pr.dcm", "PR object (not an image)"),
        ("rt.dcm", "RTSTRUCT object (not an image)"),
        (
            "seg.dcm",
            "DICOM SEG object (a segmentation, not an image; medfcn evaluate/train read it as a label)",
        ),
    ]


def _retag(files: list[Path], **tags: object) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_capture_multiframe_and_colour(tmp_path: Path) -> None:
    sc = _series(tmp_path / "sc", n=6, seed=17)
    _retag(sc, SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    # One file holding 4 frames: a multi-frame secondary capture, and an enhanced-CT-like object.
    for name, sop in (("mf_sc", "1.2.840.10008.5.1.4.1.1.7.3"), ("mf_ct", "1.2.840.10008.5.1.4.1.1.2.1")):
        [f] = _series(tmp_path / name, n=1, seed=18 if name == "mf_sc" else 19)
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = sop
        ds.NumberOfFrames = 4
        ds.PixelData = ds.PixelData * 4
        ds.save_as(f)
    rgb = _series(tmp_path / "rgb", n=6, seed=20)
    for f in rgb:
        ds = pydicom.dcmread(f)
        px = (ds.pixel_array // 16).astype(np.uint8)
        ds.PixelData = np.repeat(px[..., None], 3, axis=-1).tobytes()
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.save_as(f)
    _, skipped = _rows(find_cases(tmp_path))
    assert skipped == [
        (
            "mf_ct/IM0001.dcm",
            "enhanced image without per-frame positions (no PerFrameFunctionalGroupsSequence for its 4 frames): "
            "cannot place the frames in space",
        ),
        ("mf_sc/IM0001.dcm", "multi-frame secondary capture (not an acquired CT/MR volume)"),
        ("rgb", "RGB/colour image (PhotometricInterpretation RGB): grayscale CT/MR expected"),
        ("sc", "secondary capture (not an acquired CT/MR volume)"),
    ]


def test_geometry_reasons(tmp_path: Path) -> None:
    _retag(_series(tmp_path / "no_pos", n=6, seed=21)[2:3], ImagePositionPatient=None)
    files = _series(tmp_path / "sizes", n=6, seed=22)
    ds = pydicom.dcmread(files[1])
    ds.Rows, ds.Columns = 9, 40  # same byte count, different image size
    ds.save_as(files[1])
    files = _series(tmp_path / "dup", n=6, seed=23)
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = generate_uid()  # a second instance at the same position
    ds.save_as(tmp_path / "dup" / "extra.dcm")
    files = _series(tmp_path / "orient", n=6, seed=24)
    _retag(files[4:5], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    files = _series(tmp_path / "cut", n=6, seed=25)
    files[1].write_bytes(files[1].read_bytes()[:-50])
    _, skipped = _rows(find_cases(tmp_path))
    assert skipped == [
        ("cut", "truncated DICOM file (pixel data shorter than declared: 670 of 720 bytes) (1 of 6 files)"),
        (
            "dup",
            "duplicate slice positions (2 slices share a position: several acquisitions, echoes or phases in one series?)",
        ),
        ("no_pos", "missing ImagePositionPatient (1 of 6 files)"),
        ("orient", "inconsistent ImageOrientationPatient within the series"),
        ("sizes", "mixed image sizes within series (9x40, 18x20 rows x columns)"),
    ]


def test_damaged_headers_are_reported_per_file(tmp_path: Path) -> None:
    files = _series(tmp_path / "s", n=6, seed=32)
    raw = bytearray(files[0].read_bytes())
    raw[400:700] = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    files[0].write_bytes(bytes(raw))
    files[1].write_bytes(files[1].read_bytes()[:200])  # cut inside the file meta
    _, skipped = _rows(find_cases(tmp_path, min_slices=4))
    assert [p for p, _ in skipped] == ["s/IM0001.dcm", "s/IM0002.dcm"]
    assert all(re.match(r"truncated or corrupt DICOM (file|header) \(", r) for _, r in skipped), skipped
    assert [c.n_slices for c in find_cases(tmp_path, min_slices=4).cases] == [4]  # the rest is a series


def test_junk_files(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "zeros.dcm").write_bytes(b"\x00" * 50)
    (tmp_path / "fake.nii.gz").write_text("not a nifti\n")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: ignored
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nib.save(img, str(tmp_path / "huge.nii"))
    raw = bytearray((tmp_path / "huge.nii").read_bytes())
    raw[40:56] = np.array([3, 20000, 20000, 5000, 1, 1, 1, 1], dtype="<i2").tobytes()
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    _, skipped = _rows(find_cases(tmp_path))
    assert [p for p, _ in skipped] == ["empty.dcm", "fake.nii.gz", "huge.nii", "photo.jpg", "zeros.dcm"]
    reasons = dict(skipped)
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert reasons["fake.nii.gz"].startswith("not a readable NIfTI file (")
    assert reasons["huge.nii"] == (
        "truncated NIfTI file: header declares 20000x20000x5000 int16 voxels (4e+12 bytes) but the file has 368 bytes"
    )
    assert reasons["photo.jpg"] == reasons["zeros.dcm"] == "not a DICOM or image file"


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permission bits")
def test_permission_denied(tmp_path: Path) -> None:
    locked = _nifti(tmp_path / "locked.nii.gz")
    files = _series(tmp_path / "series", n=6, seed=26)
    locked.chmod(0o000)
    files[0].chmod(0o000)
    try:
        _, skipped = _rows(find_cases(tmp_path))
    finally:
        locked.chmod(0o644)
        files[0].chmod(0o644)
    assert ("locked.nii.gz", "permission denied") in skipped
    assert ("series/IM0001.dcm", "permission denied") in skipped


def test_permission_denied_is_reported_even_when_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads everything, so the refusal is simulated where the library opens files."""
    import builtins

    from medfcn.data.dicom import headers

    locked = _nifti(tmp_path / "locked.nii.gz")
    files = _series(tmp_path / "series", n=6, seed=26)
    real_open, real_load = builtins.open, nib.load

    def deny_open(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == files[0]:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    def deny_load(file: object, *args: object, **kwargs: object) -> object:
        if Path(str(file)) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_load(file, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(headers, "open", deny_open, raising=False)
    monkeypatch.setattr(nib, "load", deny_load)
    report = find_cases(tmp_path)
    assert _rows(report)[1] == [
        ("locked.nii.gz", "permission denied"),
        ("series/IM0001.dcm", "permission denied"),
    ]
    assert [c.n_slices for c in report.cases] == [5]  # the readable slices still form a series


# ----------------------------------------------------------------------------------------------- links


@pytest.mark.timeout(60)
def test_symlink_loops_end_and_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = _series(root / "series", n=6, seed=27)
    os.symlink("..", root / "series" / "up")  # back to the root
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")  # a <-> b
    os.symlink("missing_target", root / "dangling")
    os.symlink(".", root / "self")
    before = _snapshot(root)
    report = find_cases(root)
    assert _snapshot(root) == before
    assert [c.id for c in report.cases] == [_sid(files[0])]
    assert _rows(report)[1] == [
        ("a", "symbolic link loop (cannot be resolved): not followed"),
        ("b", "symbolic link loop (cannot be resolved): not followed"),
        ("dangling", "broken symbolic link (target missing)"),
        ("self", "symbolic link to a folder already scanned (loop or duplicate): not followed"),
        ("series/up", "symbolic link to a folder already scanned (loop or duplicate): not followed"),
    ]


def test_linked_folders_and_files_are_read_once(tmp_path: Path) -> None:
    outside = tmp_path / "archive"
    files = _series(outside / "ct", n=6, seed=28)
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(outside / "ct", root / "a_link")
    os.symlink(outside / "ct", root / "b_link")
    scan = _nifti(root / "z_scan.nii.gz")
    os.symlink(scan, root / "alias.nii.gz")
    report = find_cases(root)
    cases, skipped = _rows(report)
    assert cases == [
        (_sid(files[0]), "dicom", "a_link", 6, "CT"),
        ("z_scan", "nifti", "z_scan.nii.gz", 10, None),
    ]
    assert skipped == [
        ("alias.nii.gz", "link to a file already found (z_scan.nii.gz)"),
        ("b_link", "symbolic link to a folder already scanned (loop or duplicate): not followed"),
    ]


# ----------------------------------------------------------------------------------------------- ids and privacy


def test_nifti_ids_are_safe_ascii_and_collisions_are_disambiguated(tmp_path: Path) -> None:
    _nifti(tmp_path / "Fall 03 (ü).nii.gz")
    _nifti(tmp_path / "a" / "ct.nii.gz")
    _nifti(tmp_path / "b" / "CT.nii")
    _nifti(tmp_path / "con.nii.gz")
    _nifti(tmp_path / "-odd name!!.nii")
    vol = sitk.Image(8, 8, 8, sitk.sitkInt16)
    sitk.WriteImage(vol, str(tmp_path / "ct.mha"))
    report = find_cases(tmp_path)
    ids = {c.source: c.id for c in report.cases}
    h = {s: hashlib.sha1(s.encode()).hexdigest()[:8] for s in ("a/ct.nii.gz", "b/CT.nii", "ct.mha")}
    assert ids == {
        "Fall 03 (ü).nii.gz": "Fall_03_u",
        "a/ct.nii.gz": f"ct-{h['a/ct.nii.gz']}",
        "b/CT.nii": f"CT-{h['b/CT.nii']}",  # collides with "ct" on case-insensitive file systems
        "ct.mha": f"ct-{h['ct.mha']}",
        "con.nii.gz": "con_",  # a Windows device name
        "-odd name!!.nii": "odd_name",
    }
    assert {c.kind for c in report.cases if c.source == "ct.mha"} == {"image"}
    assert [c.id for c in find_cases(tmp_path).cases] == [c.id for c in report.cases]  # stable
    only_nifti = find_cases(tmp_path, include_images=False)
    assert ("ct.mha", "NRRD/MetaImage file (image files excluded)") in _rows(only_nifti)[1]


def test_ids_and_report_carry_no_patient_data(tmp_path: Path) -> None:
    markers = {"PatientName": "ZZNAME^MARKER", "PatientID": "ZZID4711", "PatientBirthDate": "19230405"}
    files = _series(tmp_path / "series", n=6, seed=29)
    _retag(files, **markers)
    loc = _series(tmp_path / "short", n=2, seed=30)
    _retag(loc, **markers)
    _non_image(tmp_path / "sr.dcm", "SR", "1.2.840.10008.5.1.4.1.1.88.11")
    report = find_cases(tmp_path)
    assert [c.id for c in report.cases] == [_sid(files[0])]
    text = json.dumps(report.to_dict()) + repr(report)
    for value in (*markers.values(), "ZZNAME", "MARKER", "SYNTH"):
        assert value not in text


# ----------------------------------------------------------------------------------------------- roots


def test_root_may_be_a_file_or_a_series_folder(tmp_path: Path) -> None:
    nii = _nifti(tmp_path / "one.nii.gz")
    files = _series(tmp_path / "series", n=6, seed=31)
    [case] = find_cases(nii).cases
    assert (case.id, case.source, case.paths) == ("one", ".", [nii])
    [case] = find_cases(tmp_path / "series").cases
    assert (case.source, case.n_slices) == (".", 6)
    single = find_cases(files[2])
    assert single.cases == [] and _rows(single)[1] == [(".", "only 1 slice (< min_slices 5)")]
    [case] = find_cases(files[2], min_slices=1).cases
    assert (case.source, case.n_slices, case.paths) == (".", 1, [files[2]])
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "nowhere")


def test_records_are_plain_dataclasses() -> None:
    case = Case(id="x", source="x.nii.gz", kind="nifti", paths=[Path("/d/x.nii.gz")])
    assert case.load_input() == "/d/x.nii.gz"
    assert case.to_dict()["n_files"] == 1
    assert Skipped("a", "b").to_dict() == {"path": "a", "reason": "b"}


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _nifti(tmp_path / "a.nii.gz")
    find_cases(tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""


# ----------------------------------------------------------------------------------------------- hostile corpus


def _corpus_module() -> object:
    path = Path(__file__).resolve().parents[1] / "robustness" / "_corpus.py"
    spec = importlib.util.spec_from_file_location("_hostile_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_hostile_corpus_reasons_match_the_robustness_suite(tmp_path: Path) -> None:
    corpus = _corpus_module()
    root = tmp_path / "in put ü"
    entries = {e.name: e for e in corpus.build_corpus(root)}  # type: ignore[attr-defined]
    try:
        before = corpus.tree_digest(root)  # type: ignore[attr-defined]
        report = find_cases(root)
        assert corpus.tree_digest(root) == before  # type: ignore[attr-defined]
    finally:
        (root / "locked.nii.gz").chmod(0o644)
    top = lambda p: p.split("/")[0]  # noqa: E731
    for case in report.cases:
        assert (
            entries[top(case.source)].expect != "reject"
            or top(case.source)
            in {
                "truncated.nii.gz",  # decided when the voxels are read (gzip stream cut short)
                "four_d.nii.gz",  # decided by the bundle's channel check
            }
            or (top(case.source) == "locked.nii.gz" and IS_ROOT)
        )
    for skip in report.skipped:
        entry = entries[top(skip.path)]
        assert entry.expect != "ok", skip
        assert re.search(entry.reason, skip.reason, re.I), skip
        assert not any(f"{link}/" in skip.path for link in ("back_to_root", "loop_a", "loop_b"))
    assert {top(c.source) for c in report.cases} >= {"scan with spaces ü.nii.gz", "série dicom ä"}
