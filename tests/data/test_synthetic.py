"""Synthetic CT phantoms: anatomy, labels, geometry, MSD writing and DICOM series."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medfcn.data.synthetic import CT_IMAGE_STORAGE, make_phantom, write_dicom_series, write_msd_dataset
from medfcn.errors import DataError

SHAPE = (40, 44, 24)  # deliberately odd, small sizes


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) of voxel indices (N, 3)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates of the 8 outer corners of the voxel grid, sorted so grids can be compared as sets."""
    idx = np.array(
        [
            [i, j, k]
            for i in (-0.5, shape[0] - 0.5)
            for j in (-0.5, shape[1] - 0.5)
            for k in (-0.5, shape[2] - 0.5)
        ]
    )
    pts = _world(affine, idx)
    return pts[np.lexsort(np.round(pts, 3).T[::-1])]


# ----------------------------------------------------------------------------------------------- make_phantom


def test_same_seed_same_phantom_and_other_seed_differs() -> None:
    a, b = make_phantom(SHAPE, seed=7), make_phantom(SHAPE, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    c = make_phantom(SHAPE, seed=8)
    assert not np.array_equal(a.label, c.label)
    assert not np.allclose(a.affine, c.affine)


@pytest.mark.parametrize("seed", range(4))
def test_labels_dtypes_and_hu_ranges(seed: int) -> None:
    ph = make_phantom(SHAPE, seed=seed)
    assert ph.image.shape == SHAPE and ph.image.dtype == np.float32
    assert ph.label.shape == SHAPE and ph.label.dtype == np.uint8
    assert set(np.unique(ph.label).tolist()) == {0, 1, 2}
    assert ph.num_tumours >= 1
    assert ph.image.min() >= -1024 and ph.image.max() <= 3071
    air = ph.image[ph.image < -500]
    assert air.size > 0 and abs(float(np.median(air)) + 1000) < 30  # air around the body
    assert float(np.median(ph.image[ph.label == 1])) == pytest.approx(60, abs=20)  # liver ~ +60 HU
    lesions, n = ndimage.label(ph.label == 2)
    for c in range(1, n + 1):  # each lesion is hypo- or hyperdense, visibly different from the liver
        contrast = float(np.median(ph.image[lesions == c])) - float(np.median(ph.image[ph.label == 1]))
        assert abs(contrast) > 10
    assert np.count_nonzero((ph.image > -150) & (ph.image < -60)) > 100  # fat
    assert ph.image.max() > 400  # bone


@pytest.mark.parametrize(
    ("orientation", "oblique"), [("random", 0.0), ("lps", 0.0), ("ras", 0.0), ("random", 12.0)]
)
def test_anatomy_is_consistent_in_world_coordinates(orientation: str, oblique: float) -> None:
    for seed in range(3):
        ph = make_phantom(SHAPE, seed=seed, orientation=orientation, max_oblique_deg=oblique)  # type: ignore[arg-type]
        body = _world(ph.affine, np.argwhere(ph.image > -500).astype(float))
        liver = _world(ph.affine, np.argwhere(ph.label == 1).astype(float))
        bone = _world(ph.affine, np.argwhere(ph.image > 250).astype(float))
        centre = body.mean(axis=0)
        # The liver is on the patient's right (RAS: negative x) and the spine is posterior (negative y).
        assert liver[:, 0].mean() < centre[0] - 2.0, (orientation, seed)
        assert bone[:, 1].mean() < liver[:, 1].mean(), (orientation, seed)


def test_liver_inside_body_and_tumours_inside_liver() -> None:
    for seed in range(4):
        ph = make_phantom(SHAPE, seed=seed)
        liver, tumour = ph.label == 1, ph.label == 2
        near_liver = ndimage.binary_dilation(liver | tumour)
        assert ph.image[near_liver].min() > -900, "liver touches the air outside the body"
        rim = ndimage.binary_dilation(tumour) & ~tumour
        assert np.count_nonzero(ph.label[rim] == 1) / np.count_nonzero(rim) > 0.9
        components, n = ndimage.label(tumour)
        for c in range(1, n + 1):  # every lesion sits in the liver
            assert np.any(ndimage.binary_dilation(components == c) & liver)


def test_random_affine_is_anisotropic_and_not_identity() -> None:
    directions = set()
    for seed in range(8):
        ph = make_phantom(SHAPE, seed=seed)
        sx, sy, sz = ph.spacing
        assert 0.7 <= sx <= 1.0 and sx == pytest.approx(sy)
        assert 1.5 <= sz <= 5.0
        direction = ph.affine[:3, :3] / np.array(ph.spacing)
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-9)
        assert not np.allclose(direction, np.eye(3))
        directions.add(tuple(np.round(direction).astype(int).ravel()))
    assert len(directions) > 2  # flips and in-plane swaps vary with the seed


def test_explicit_spacing_and_oblique_tilt() -> None:
    ph = make_phantom(SHAPE, spacing=(0.9, 0.9, 2.5), seed=1, orientation="lps", max_oblique_deg=10.0)
    assert ph.spacing == pytest.approx((0.9, 0.9, 2.5))
    direction = ph.affine[:3, :3] / np.array(ph.spacing)
    assert np.abs(direction).max(axis=0).min() < 0.9999  # no axis is exactly a world axis
    assert np.degrees(np.arccos(np.abs(direction).max(axis=0))).max() <= 10.0 + 1e-6


def test_bad_shape_and_spacing_are_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        make_phantom((32, 32), seed=0)
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(SHAPE, spacing=(1.0, -1.0, 2.0))


# ----------------------------------------------------------------------------------------------- MSD writing


def test_msd_layout_and_dataset_json(synthetic_dataset: Path) -> None:
    meta = json.loads((synthetic_dataset / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert meta["modality"] == {"0": "CT"}
    assert meta["tensorImageSize"] == "3D"
    assert (meta["numTraining"], meta["numTest"]) == (6, 2)
    assert [t["image"] for t in meta["training"]] == [f"./imagesTr/liver_{i:03d}.nii.gz" for i in range(6)]
    assert [t["label"] for t in meta["training"]] == [f"./labelsTr/liver_{i:03d}.nii.gz" for i in range(6)]
    assert meta["test"] == ["./imagesTs/liver_006.nii.gz", "./imagesTs/liver_007.nii.gz"]
    assert sorted(p.name for p in (synthetic_dataset / "imagesTr").iterdir()) == [
        f"liver_{i:03d}.nii.gz" for i in range(6)
    ]
    assert sorted(p.name for p in (synthetic_dataset / "labelsTr").iterdir()) == [
        f"liver_{i:03d}.nii.gz" for i in range(6)
    ]
    assert not list(synthetic_dataset.rglob(".*tmp*"))  # no temp files left behind


def test_nifti_files_hold_the_phantom_and_its_affine(synthetic_dataset: Path) -> None:
    ph = make_phantom((48, 48, 32), seed=1)  # case i of seed s is make_phantom(seed=s * 100_003 + i)
    image = nib.load(synthetic_dataset / "imagesTr" / "liver_001.nii.gz")
    label = nib.load(synthetic_dataset / "labelsTr" / "liver_001.nii.gz")
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    for img in (image, label):
        np.testing.assert_allclose(img.affine, ph.affine, atol=1e-4)
        np.testing.assert_allclose(img.header.get_qform(), ph.affine, atol=1e-4)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.rint(ph.image).astype(np.int16))
    np.testing.assert_array_equal(np.asanyarray(label.dataobj), ph.label)


def test_rerun_reuses_files_and_new_seed_regenerates(tmp_path: Path) -> None:
    root = write_msd_dataset(tmp_path / "ds", num_train=2, num_test=1, shape=(24, 24, 12), seed=3)
    files = sorted(p for p in root.rglob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    before = {p: p.read_bytes() for p in files}
    # An interrupted run: one case and dataset.json never got written.
    (root / "labelsTr" / "liver_001.nii.gz").unlink()
    (root / "dataset.json").unlink()
    write_msd_dataset(root, num_train=2, num_test=1, shape=(24, 24, 12), seed=3)
    assert (root / "labelsTr" / "liver_001.nii.gz").read_bytes() == before[
        root / "labelsTr" / "liver_001.nii.gz"
    ]
    assert (root / "imagesTr" / "liver_000.nii.gz").stat().st_mtime_ns == stamps[
        root / "imagesTr" / "liver_000.nii.gz"
    ]
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
    write_msd_dataset(root, num_train=2, num_test=1, shape=(24, 24, 12), seed=4)
    assert (root / "imagesTr" / "liver_000.nii.gz").read_bytes() != before[
        root / "imagesTr" / "liver_000.nii.gz"
    ]


def test_never_overwrites_a_dataset_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "real", "training": []}))
    with pytest.raises(DataError, match="did not generate"):
        write_msd_dataset(tmp_path, num_train=1, num_test=0, shape=(16, 16, 8))
    assert json.loads((tmp_path / "dataset.json").read_text())["name"] == "real"
    with pytest.raises(DataError, match="num_train"):
        write_msd_dataset(tmp_path / "x", num_train=0, num_test=0)
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ct.nii.gz").write_bytes(b"someone's data")
    with pytest.raises(DataError, match="not empty and holds no dataset written by medfcn"):
        write_msd_dataset(tmp_path / "scans", num_train=1, num_test=0, shape=(16, 16, 8))
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == ["ct.nii.gz"]


def test_rerun_with_fewer_cases_removes_the_extra_ones(tmp_path: Path) -> None:
    root = write_msd_dataset(tmp_path / "ds", num_train=3, num_test=2, shape=(16, 16, 8), dicom=True)
    assert (root / "dicom" / "liver_004").is_dir()
    write_msd_dataset(root, num_train=2, num_test=1, shape=(16, 16, 8))
    files = sorted(str(p.relative_to(root)) for p in root.rglob("liver_*"))
    assert files == ["imagesTr/liver_000.nii.gz", "imagesTr/liver_001.nii.gz", "imagesTs/liver_002.nii.gz",
                     "labelsTr/liver_000.nii.gz", "labelsTr/liver_001.nii.gz"]  # fmt: skip


def test_monai_loads_cases_with_the_liver_on_the_patients_right(synthetic_dataset: Path) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )
    for i in range(3):
        case = load(
            {
                "image": str(synthetic_dataset / "imagesTr" / f"liver_{i:03d}.nii.gz"),
                "label": str(synthetic_dataset / "labelsTr" / f"liver_{i:03d}.nii.gz"),
            }
        )
        image, label = case["image"][0].numpy(), case["label"][0].numpy()
        assert image.shape == label.shape
        # In RAS voxel order the first index grows towards the patient's left.
        liver_x = np.argwhere(label == 1)[:, 0].mean()
        body_x = np.argwhere(image > -500)[:, 0].mean()
        assert liver_x < body_x
        np.testing.assert_allclose(case["image"].affine.numpy(), case["label"].affine.numpy())


def test_dataset_with_dicom_test_cases(tmp_path: Path) -> None:
    names: list[str] = []
    root = write_msd_dataset(
        tmp_path / "ds", num_train=1, num_test=2, shape=(20, 22, 9), dicom=True, progress=names.append
    )
    assert names == ["liver_000", "liver_001", "liver_002"]
    for case in ("liver_001", "liver_002"):
        files = sorted((root / "dicom" / case).iterdir())
        assert len(files) == 9 and all(f.suffix == ".dcm" for f in files)
    assert not (root / "dicom" / "liver_000").exists()  # training cases stay NIfTI only
    uids = {
        pydicom.dcmread(next((root / "dicom" / c).iterdir())).SeriesInstanceUID
        for c in ("liver_001", "liver_002")
    }
    assert len(uids) == 2


# ----------------------------------------------------------------------------------------------- DICOM


def _read_series_ras(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a series with SimpleITK; return the (X, Y, Z) array and its RAS affine."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize(
    ("orientation", "oblique", "kwargs"),
    [
        ("random", 0.0, {}),
        ("lps", 10.0, {"reverse_instance_numbers": True}),
        ("random", 8.0, {"signed": True, "rescale_intercept": 0.0, "rescale_slope": 0.5}),
    ],
)
def test_dicom_series_round_trip(
    tmp_path: Path, orientation: str, oblique: float, kwargs: dict[str, object]
) -> None:
    ph = make_phantom((21, 25, 7), seed=5, orientation=orientation, max_oblique_deg=oblique)  # type: ignore[arg-type]
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "series", seed=11, **kwargs)  # type: ignore[arg-type]
    assert len(files) == 7 and all(f.is_file() for f in files)

    array, affine = _read_series_ras(tmp_path / "series")
    # Same voxel grid in space: the world coordinates of the outer corners agree (the reader may order
    # slices differently, so corners are compared as a set).
    np.testing.assert_allclose(_corners(array.shape, affine), _corners(ph.image.shape, ph.affine), atol=1e-3)
    # Same HU at the same place: bring both to the closest canonical orientation and compare.
    ours = nib.as_closest_canonical(nib.Nifti1Image(ph.image, ph.affine))
    theirs = nib.as_closest_canonical(nib.Nifti1Image(array.astype(np.float32), affine))
    np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-3)
    slope = float(kwargs.get("rescale_slope", 1.0))  # type: ignore[arg-type]
    np.testing.assert_allclose(theirs.get_fdata(), ours.get_fdata(), atol=slope / 2 + 1e-3)


def test_dicom_tags_are_synthetic_and_deterministic(tmp_path: Path) -> None:
    ph = make_phantom((16, 18, 5), seed=2)
    a = write_dicom_series(ph.image, ph.affine, tmp_path / "a", seed=1, series_description="phantom A")
    b = write_dicom_series(ph.image, ph.affine, tmp_path / "b", seed=1)
    c = write_dicom_series(ph.image, ph.affine, tmp_path / "c", seed=2)
    ds = pydicom.dcmread(a[0])
    assert ds.SOPClassUID == CT_IMAGE_STORAGE and ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert str(ds.PatientName) == "SYNTHETIC^PHANTOM" and ds.PatientBirthDate == ""
    assert ds.Modality == "CT" and ds.SeriesDescription == "phantom A" and ds.RescaleType == "HU"
    assert (int(ds.Rows), int(ds.Columns)) == (18, 16)
    lps_origin = np.diag([-1.0, -1.0, 1.0]) @ ph.affine[:3, 3]
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], lps_origin, atol=1e-6)
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [ph.spacing[1], ph.spacing[0]], atol=1e-6)
    hu = ds.pixel_array.T.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, np.rint(ph.image[:, :, 0]))
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in a]
    assert len(set(uids)) == len(uids) and all(pydicom.uid.UID(u).is_valid for u in uids)
    same = pydicom.dcmread(b[0])
    assert (same.StudyInstanceUID, same.SeriesInstanceUID, same.SOPInstanceUID) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    other = pydicom.dcmread(c[0])
    assert (
        other.StudyInstanceUID != ds.StudyInstanceUID and other.FrameOfReferenceUID != ds.FrameOfReferenceUID
    )
    assert {pydicom.dcmread(f).FrameOfReferenceUID for f in a} == {ds.FrameOfReferenceUID}


@pytest.mark.parametrize(
    "syntax",
    [
        pydicom.uid.RLELossless,
        pydicom.uid.JPEGLSLossless,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    ],
)
def test_dicom_compressed_transfer_syntaxes_decode_to_the_same_hu(tmp_path: Path, syntax: str) -> None:
    ph = make_phantom((32, 34, 3), seed=3)
    files = write_dicom_series(
        ph.image, ph.affine, tmp_path, transfer_syntax=syntax, signed=True, rescale_intercept=0.0
    )
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        hu = ds.pixel_array.T.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.rint(ph.image[:, :, k]))


def test_dicom_mr_series_has_no_rescale(tmp_path: Path) -> None:
    ph = make_phantom((16, 18, 4), seed=3, orientation="lps")
    signal = np.clip(ph.image + 1000.0, 0, None)  # any non-negative MR-like signal
    files = write_dicom_series(signal, ph.affine, tmp_path, modality="MR", series_description="t1")
    ds = pydicom.dcmread(files[1])
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds
    np.testing.assert_array_equal(ds.pixel_array.T, np.rint(signal[:, :, 1]))
    array, affine = _read_series_ras(tmp_path)
    np.testing.assert_allclose(_corners(array.shape, affine), _corners(ph.image.shape, ph.affine), atol=1e-3)


def test_dicom_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(np.zeros((4, 4)), np.eye(4), tmp_path)
    with pytest.raises(ValueError, match="4x4"):
        write_dicom_series(np.zeros((4, 4, 2)), np.eye(3), tmp_path)
    with pytest.raises(ValueError, match="modality"):
        write_dicom_series(np.zeros((4, 4, 2)), np.eye(4), tmp_path, modality="PT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot encode transfer syntax JPEG Baseline"):
        write_dicom_series(
            np.zeros((4, 4, 2)), np.eye(4), tmp_path, transfer_syntax=pydicom.uid.JPEGBaseline8Bit
        )
