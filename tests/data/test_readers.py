"""DicomSeriesReader through MONAI's LoadImage(d): arrays, affines and world coordinates of DICOM series.

Every geometry test writes a phantom as a DICOM series (pydicom), loads it the way the bundle does
(``LoadImaged(reader="medfcn.data.readers.DicomSeriesReader")``) and compares with the phantom: the
array in HU and the RAS affine, and the world position of every voxel.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.transforms import EnsureChannelFirstd, LoadImage, LoadImaged

from medfcn.data import readers
from medfcn.data.discovery import find_cases
from medfcn.data.readers import DicomSeriesReader
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.errors import InputError

READER = "medfcn.data.readers.DicomSeriesReader"
SHAPE = (23, 19, 9)  # odd sizes: X (columns), Y (rows), Z (slices)


def load(source: object, **kwargs: object) -> object:
    """The bundle's way: LoadImaged with the reader named by dotted path."""
    return LoadImaged("image", reader=READER, image_only=True, **kwargs)({"image": source})["image"]


def expected_grid(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a series written from (image, affine) loads as.

    Slices are sorted along the DICOM normal (row x column). For a left-handed voxel grid the slice
    axis runs against that normal, so the loaded array is the source reversed along Z and the affine's
    third column is negated, its origin moved to the last slice: the same voxels in the same places.
    """
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    if np.linalg.det(lps[:3, :3]) > 0:
        return image, affine
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, image.shape[2] - 1.0]) + affine[:3, 3]
    return image[:, :, ::-1], flipped


def world_to_source_index(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) world points (RAS mm) -> (N, 3) voxel indices of the grid ``affine``."""
    inv = np.linalg.inv(affine)
    return points @ inv[:3, :3].T + inv[:3, 3]


def coronal_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Coronal slices: X runs right-to-left, Y head-to-foot, slices anterior-to-posterior (RAS)."""
    sx, sy, sz = spacing
    affine = np.eye(4)
    affine[:3, :3] = [[-sx, 0.0, 0.0], [0.0, 0.0, -sz], [0.0, -sy, 0.0]]
    affine[:3, 3] = [40.0, 60.0, -20.0]
    return affine


# ----------------------------------------------------------------------------------------------- MONAI glue


def test_dotted_path_resolves_to_the_reader() -> None:
    loader = LoadImage(reader=READER, image_only=True)
    assert isinstance(loader.readers[-1], DicomSeriesReader)  # tried first


def test_verify_suffix() -> None:
    r = DicomSeriesReader()
    assert r.verify_suffix("series_folder")
    assert r.verify_suffix(["a.dcm", "b.dcm"])
    assert r.verify_suffix("IM0001")  # DICOM without extension
    assert r.verify_suffix("volume.mha") and r.verify_suffix("volume.nrrd")
    assert not r.verify_suffix("scan.nii.gz") and not r.verify_suffix("scan.NII")
    assert not r.verify_suffix(["a.nii.gz", "b.nii"])


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        DicomSeriesReader(backend="gdcm")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- geometry

GEOMETRIES = {
    # name: (make_phantom kwargs, affine override or None, write kwargs)
    "axial": ({"orientation": "lps", "spacing": (0.8, 0.8, 2.5)}, None, {}),
    "ras": ({"orientation": "ras", "spacing": (0.9, 0.9, 2.0)}, None, {}),
    "left_handed": ({"orientation": "lps"}, np.diag([-0.9, 0.9, 2.0, 1.0]), {}),
    "coronal": ({"orientation": "lps"}, coronal_affine((0.7, 0.8, 3.0)), {}),
    "oblique": ({"orientation": "random", "max_oblique_deg": 25.0, "spacing": (0.75, 0.85, 2.2)}, None, {}),
    "reversed_instance_numbers": (
        {"orientation": "lps", "spacing": (0.8, 0.8, 2.5)},
        None,
        {"reverse_instance_numbers": True},
    ),
    "anisotropic_signed": (
        {"orientation": "random", "spacing": (0.6, 1.1, 4.4)},
        None,
        {"signed": True},
    ),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_series_loads_with_phantom_array_and_affine(name: str, tmp_path: Path) -> None:
    ph_kwargs, affine_override, write_kwargs = GEOMETRIES[name]
    ph = make_phantom(SHAPE, seed=3, noise_hu=0.0, **ph_kwargs)  # type: ignore[arg-type]
    affine = ph.affine if affine_override is None else affine_override
    files = write_dicom_series(ph.image, affine, tmp_path / "series", seed=3, **write_kwargs)  # type: ignore[arg-type]
    hu = np.rint(ph.image)  # stored as round(HU + 1024) with intercept -1024: HU back exactly

    img = load([str(f) for f in files])
    want_image, want_affine = expected_grid(hu, affine)
    assert tuple(img.shape) == SHAPE
    assert img.dtype.is_floating_point and str(img.dtype) == "torch.float32"
    np.testing.assert_array_equal(img.numpy(), want_image)
    np.testing.assert_allclose(img.affine.numpy(), want_affine, atol=1e-4)
    assert img.meta["space"] == "RAS"
    assert math.isnan(img.meta["original_channel_dim"])
    np.testing.assert_array_equal(img.meta["spatial_shape"], SHAPE)

    # The folder gives the same volume as the file list (any order of the list).
    by_folder = load(str(tmp_path / "series"))
    np.testing.assert_array_equal(by_folder.numpy(), img.numpy())
    np.testing.assert_allclose(by_folder.affine.numpy(), img.affine.numpy())
    shuffled = load([str(f) for f in files[::-1]])
    np.testing.assert_array_equal(shuffled.numpy(), img.numpy())


@pytest.mark.parametrize("name", ["oblique", "coronal", "reversed_instance_numbers"])
def test_every_voxel_keeps_its_world_position(name: str, tmp_path: Path) -> None:
    """Physical points, not shapes: each loaded voxel sits where the source voxel of that value sits,
    and a liver mask carried into the loaded grid keeps its world centroid."""
    ph_kwargs, affine_override, write_kwargs = GEOMETRIES[name]
    ph = make_phantom(SHAPE, seed=5, noise_hu=0.0, **ph_kwargs)  # type: ignore[arg-type]
    affine = ph.affine if affine_override is None else affine_override
    files = write_dicom_series(ph.image, affine, tmp_path / "s", seed=5, **write_kwargs)  # type: ignore[arg-type]
    img = load([str(f) for f in files])
    loaded, loaded_affine = img.numpy(), img.affine.numpy()

    ijk = np.indices(SHAPE).reshape(3, -1).T.astype(np.float64)
    world = ijk @ loaded_affine[:3, :3].T + loaded_affine[:3, 3]
    src = world_to_source_index(world, affine)
    np.testing.assert_allclose(src, np.rint(src), atol=1e-3)  # lands on source voxel centres
    src_i = np.rint(src).astype(int)
    np.testing.assert_array_equal(loaded.reshape(-1), np.rint(ph.image)[tuple(src_i.T)])

    # A mask defined on the source grid, carried over voxel by voxel, has the same world centroid.
    mask = ph.label[tuple(src_i.T)].reshape(SHAPE) == 1
    assert mask.any()
    centroid_loaded = np.argwhere(mask).mean(0) @ loaded_affine[:3, :3].T + loaded_affine[:3, 3]
    centroid_source = np.argwhere(ph.label == 1).mean(0) @ affine[:3, :3].T + affine[:3, 3]
    np.testing.assert_allclose(centroid_loaded, centroid_source, atol=1e-6)


def test_left_handed_grid_loads_reversed_along_z(tmp_path: Path) -> None:
    """DICOM slices are ordered along row x column; a left-handed source grid (NIfTI-style diag(-1, 1, 1))
    comes back reversed along Z with the matching affine: voxel values stay at their world positions."""
    ph = make_phantom(SHAPE, seed=3, noise_hu=0.0, orientation="lps")
    affine = np.diag([-0.9, 0.9, 2.0, 1.0])
    files = write_dicom_series(ph.image, affine, tmp_path / "s")
    img = load([str(f) for f in files])
    np.testing.assert_array_equal(img.numpy(), np.rint(ph.image)[:, :, ::-1])
    assert img.affine[2, 2] == pytest.approx(-2.0) and img.affine[2, 3] == pytest.approx(2.0 * (SHAPE[2] - 1))


def test_channel_first_pipeline_keeps_the_affine(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=1, noise_hu=0.0, orientation="random", max_oblique_deg=10.0)
    write_dicom_series(ph.image, ph.affine, tmp_path / "s", seed=1)
    data = LoadImaged("image", reader=READER, image_only=True)({"image": str(tmp_path / "s")})
    data = EnsureChannelFirstd("image")(data)
    assert tuple(data["image"].shape) == (1, *SHAPE)
    _, want_affine = expected_grid(ph.image, ph.affine)
    np.testing.assert_allclose(data["image"].affine.numpy(), want_affine, atol=1e-4)


def test_ct_rescale_slope_and_intercept_give_hounsfield_units(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=2, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(
        ph.image, ph.affine, tmp_path / "s", rescale_slope=2.0, rescale_intercept=-1024.0
    )
    ds = pydicom.dcmread(files[0])
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (2.0, -1024.0)
    stored = ds.pixel_array.astype(np.float64)
    assert stored.max() < 2100  # raw values are about half the HU range: the slope matters
    img = load([str(f) for f in files]).numpy()
    assert np.abs(img - ph.image).max() <= 1.0 + 1e-4  # rounding to the stored step of 2 HU
    np.testing.assert_array_equal(img, np.rint((ph.image + 1024.0) / 2.0) * 2.0 - 1024.0)


def test_mr_without_rescale_keeps_stored_values(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=4, noise_hu=0.0, orientation="lps")
    signal = ph.image + 1100.0  # MR-like positive intensities
    files = write_dicom_series(signal, ph.affine, tmp_path / "mr", modality="MR")
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "MR" and "RescaleSlope" not in ds and "RescaleIntercept" not in ds
    img = load([str(f) for f in files])
    np.testing.assert_array_equal(img.numpy(), np.rint(signal))
    np.testing.assert_allclose(img.affine.numpy(), ph.affine, atol=1e-4)


@pytest.mark.parametrize("backend", ["simpleitk", "pydicom"])
def test_both_decoders_agree(backend: str, tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=6, noise_hu=0.0, orientation="random", max_oblique_deg=15.0)
    files = write_dicom_series(
        ph.image, ph.affine, tmp_path / "s", rescale_slope=0.5, rescale_intercept=-1000.0
    )
    img = LoadImage(reader=DicomSeriesReader(backend=backend), image_only=True)([str(f) for f in files])  # type: ignore[arg-type]
    want_image, want_affine = expected_grid(np.rint((ph.image + 1000.0) / 0.5) * 0.5 - 1000.0, ph.affine)
    np.testing.assert_allclose(img.numpy(), want_image, atol=1e-3)
    np.testing.assert_allclose(img.affine.numpy(), want_affine, atol=1e-4)


def test_per_slice_rescale_is_applied_per_file(tmp_path: Path) -> None:
    """Some scanners change RescaleIntercept from slice to slice: each file's own values count."""
    ph = make_phantom(SHAPE, seed=7, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    ds = pydicom.dcmread(files[4])
    ds.PixelData = (ds.pixel_array.astype(np.int32) - 24).astype(np.uint16).tobytes()
    ds.RescaleIntercept = -1000
    ds.save_as(files[4])
    for backend in ("simpleitk", "pydicom"):
        reader = DicomSeriesReader(backend=backend)  # type: ignore[arg-type]
        img = LoadImage(reader=reader, image_only=True)([str(f) for f in files])
        np.testing.assert_array_equal(img.numpy(), np.rint(ph.image))


def test_lps_affine_option(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=8, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    img = LoadImage(reader=DicomSeriesReader(affine_lps_to_ras=False), image_only=True)(
        [str(f) for f in files]
    )
    assert img.meta["space"] == "LPS"
    np.testing.assert_allclose(img.affine.numpy(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ ph.affine, atol=1e-4)
    ds = pydicom.dcmread(files[0])
    np.testing.assert_allclose(
        img.affine.numpy()[:3, 3], [float(v) for v in ds.ImagePositionPatient], atol=1e-4
    )


def test_single_slice_uses_the_slice_spacing_tag(tmp_path: Path) -> None:
    ph = make_phantom((16, 14, 3), spacing=(0.7, 0.7, 3.5), seed=1, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    img = load([str(files[1])])
    assert tuple(img.shape) == (16, 14, 1)
    np.testing.assert_allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), [0.7, 0.7, 3.5], atol=1e-6)
    np.testing.assert_allclose(
        img.affine.numpy()[:3, 3], ph.affine[:3, :3] @ [0, 0, 1] + ph.affine[:3, 3], atol=1e-4
    )


# ----------------------------------------------------------------------------------------------- refusals


def _tilt(files: list[Path], degrees: float) -> None:
    """Shear the slice stack: each slice shifted along the column direction as a tilted gantry does."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        col = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        spacing = float(ds.SpacingBetweenSlices)
        pos = pos + k * spacing * math.tan(math.radians(degrees)) * col
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.save_as(f)


def test_gantry_tilt_is_rejected_by_reader_and_discovery(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=9, noise_hu=0.0, orientation="lps", spacing=(0.8, 0.8, 2.5))
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "tilted")
    _tilt(files, 12.0)
    with pytest.raises(InputError, match=r"gantry tilt 12\.0 deg \(not supported\)") as info:
        load(str(tmp_path / "tilted"))
    assert "tilted" in str(info.value) and "\n" not in str(info.value)
    report = find_cases(tmp_path)
    assert report.cases == []
    assert [(s.path, s.reason.split(":")[0]) for s in report.skipped] == [
        ("tilted", "gantry tilt 12.0 deg (not supported)")
    ]


def test_position_rounding_is_not_mistaken_for_tilt_or_gaps(tmp_path: Path) -> None:
    """Exports round positions to ~0.01 mm and cosines to ~1e-6: still one regular series."""
    ph = make_phantom(SHAPE, seed=10, noise_hu=0.0, orientation="random", max_oblique_deg=20.0)
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [f"{float(v):.2f}" for v in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in ds.ImageOrientationPatient]
        ds.save_as(f)
    img = load(str(tmp_path / "s"))
    _, want_affine = expected_grid(ph.image, ph.affine)
    np.testing.assert_allclose(img.affine.numpy(), want_affine, atol=0.02)


def test_missing_slice_is_rejected_not_loaded(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=11, noise_hu=0.0, orientation="lps", spacing=(0.8, 0.8, 2.5))
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "gap")
    files[4].unlink()
    with pytest.raises(InputError, match=r"missing slices: spacing between slices varies 2\.50-5\.00 mm"):
        load(str(tmp_path / "gap"))


def test_duplicate_position_and_mixed_orientation_are_rejected(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=12, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "dup")
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dup" / "IM_copy.dcm")
    with pytest.raises(InputError, match="duplicate slice positions"):
        load(str(tmp_path / "dup"))
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "orient", seed=2)
    ds = pydicom.dcmread(files[3])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[3])
    with pytest.raises(InputError, match="inconsistent ImageOrientationPatient"):
        load(str(tmp_path / "orient"))


def test_folder_with_two_series_is_refused_with_their_names(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=13, noise_hu=0.0, orientation="lps")
    a = write_dicom_series(ph.image, ph.affine, tmp_path / "a", series_number=1, series_description="portal")
    b = write_dicom_series(
        ph.image, ph.affine, tmp_path / "b", series_number=2, series_description="arterial"
    )
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in a:
        f.rename(mixed / f"a_{f.name}")
    for f in b:
        f.rename(mixed / f"b_{f.name}")
    with pytest.raises(InputError, match=r"holds 2 DICOM series \(#1 'portal' \(9 files\), #2 'arterial'"):
        load(str(mixed))
    # ... while the file list of one of them loads.
    img = load(sorted(str(p) for p in mixed.glob("b_*")))
    assert tuple(img.shape) == SHAPE


def test_junk_beside_the_series_is_ignored_but_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=14, noise_hu=0.0, orientation="lps")
    write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("exported by a PACS\n")
    assert tuple(load(str(tmp_path / "s")).shape) == SHAPE
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing\n")
    with pytest.raises(
        InputError, match=r"no DICOM image series in .*empty \(found: 1 x not a DICOM or image file\)"
    ):
        load(str(tmp_path / "empty"))


def test_truncated_slice_is_an_input_error_not_a_fallback_to_another_reader(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=15, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "t")
    raw = files[3].read_bytes()
    files[3].write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"truncated DICOM file \(pixel data shorter than declared") as info:
        load(str(tmp_path / "t"))
    assert "IM0004" in str(info.value) or "1 of 9 files" in str(info.value)


def test_error_messages_name_the_folder_and_never_the_patient(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=16, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "series_x")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "MRN0042"
        del ds.ImagePositionPatient
        ds.save_as(f)
    with pytest.raises(InputError) as info:
        load(str(tmp_path / "series_x"))
    message = str(info.value)
    assert "series_x" in message and "missing ImagePositionPatient (all 9 files)" in message
    assert "DOE" not in message and "MRN0042" not in message and "\n" not in message


def test_metadata_carries_no_dicom_attributes(tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=17, noise_hu=0.0, orientation="lps")
    files = write_dicom_series(ph.image, ph.affine, tmp_path / "s")
    img = load([str(f) for f in files])
    text = repr(dict(img.meta))
    assert "SYNTH" not in text and "PHANTOM" not in text  # PatientID / PatientName of the writer
    assert not any(str(k).startswith(("0010", "Patient")) for k in img.meta)


# ----------------------------------------------------------------------------------------------- other formats


def test_nifti_is_handed_to_monai_nibabel_reader_unchanged(shared_data: Path) -> None:
    path = shared_data / "monai-testing-data" / "anatomical.nii"
    ours = LoadImage(reader=READER, image_only=True)(str(path))
    monai = LoadImage(reader="NibabelReader", image_only=True)(str(path))
    np.testing.assert_array_equal(ours.numpy(), monai.numpy())
    np.testing.assert_array_equal(ours.affine.numpy(), monai.affine.numpy())
    # The real MR volume: 33x41x25 at 2 mm with a flipped first axis, as nibabel reads it. MONAI keeps
    # the NIfTI affine (already RAS): no LPS flip for NIfTI.
    nii = nib.load(str(path))
    assert tuple(ours.shape) == (33, 41, 25)
    np.testing.assert_allclose(ours.affine.numpy(), nii.affine)
    np.testing.assert_allclose(np.diag(ours.affine.numpy())[:3], [-2.0, 2.0, 2.0])
    np.testing.assert_array_equal(ours.numpy(), np.asarray(nii.dataobj, dtype=np.float32))


@pytest.mark.parametrize(
    "dtype, scaled", [("<i2", False), ("<i2", True), (">i2", False), ("<f4", False), ("<u1", False)]
)
def test_nifti_voxels_come_in_c_order_with_monai_values(tmp_path: Path, dtype: str, scaled: bool) -> None:
    """The NIfTI array is made C-contiguous and float32 by torch in one pass (faster than MONAI's numpy copies):
    the same values and metadata out of LoadImage, for native and byte-swapped (left to MONAI) data, with and
    without scaling, inflated by ISA-L."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (37, 41, 29)).astype(dtype)
    affine = np.array([[-1.5, 0.1, 0.0, 10.0], [0.0, 1.5, 0.2, -4.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1.0]])
    header = nib.Nifti1Header(endianness=">" if dtype.startswith(">") else "<")  # truly big-endian on disk
    header.set_data_dtype(np.dtype(dtype))
    img = nib.Nifti1Image(data, affine, header=header)
    if scaled:
        img.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / "case.nii.gz"
    nib.save(img, str(path))
    nifti = np.asanyarray(nib.load(str(path)).dataobj)
    assert not nifti.flags.c_contiguous  # what nibabel hands over: Fortran order
    assert nifti.dtype.isnative == (not dtype.startswith(">"))
    reader = DicomSeriesReader()
    array, _ = reader.get_data(reader.read(str(path)))
    # float32 in the same pass (exact for all of these; scaled: float64 per slab, then float32, as MONAI
    # casts nibabel's float64); big-endian data in native order (MONAI's LoadImage fails on it)
    assert array.flags.c_contiguous and array.dtype == np.float32
    np.testing.assert_array_equal(array, nifti.astype(np.float32))
    for dt in (None, np.float32):
        ours = LoadImage(reader=READER, image_only=True, dtype=dt)(str(path))
        if dtype.startswith(">") and dt is None:
            with pytest.raises(ValueError, match="byte order"):  # why medfcn swaps it
                LoadImage(reader="NibabelReader", image_only=True, dtype=dt)(str(path))
            continue
        monai = LoadImage(reader="NibabelReader", image_only=True, dtype=dt)(str(path))
        assert dt is None or ours.dtype == monai.dtype
        np.testing.assert_array_equal(ours.numpy(), monai.numpy())
        np.testing.assert_array_equal(ours.affine.numpy(), monai.affine.numpy())
        assert ours.meta["filename_or_obj"] == monai.meta["filename_or_obj"]
        np.testing.assert_array_equal(ours.meta["pixdim"], monai.meta["pixdim"])


def test_nifti_label_keeps_its_values(shared_data: Path) -> None:
    label = load(str(shared_data / "monai-testing-data" / "anatomical_label.nii.gz"))
    assert set(np.unique(label.numpy()).tolist()) == {0.0, 1.0}


def test_truncated_nifti_is_a_one_line_input_error(tmp_path: Path) -> None:
    ph = make_phantom((12, 10, 6), seed=1)
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(tmp_path / "ok.nii.gz"))
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"truncated or corrupt file .*cut\.nii\.gz: EOFError"):
        load(str(tmp_path / "cut.nii.gz"))
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nib.save(img, str(tmp_path / "huge.nii"))
    raw_b = bytearray((tmp_path / "huge.nii").read_bytes())
    raw_b[40:56] = np.array([3, 20000, 20000, 5000, 1, 1, 1, 1], dtype="<i2").tobytes()
    (tmp_path / "huge.nii").write_bytes(bytes(raw_b))
    with pytest.raises(InputError, match=r"truncated NIfTI file: header declares 20000x20000x5000 int16"):
        load(str(tmp_path / "huge.nii"))


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_nrrd_and_metaimage_load_with_their_geometry(suffix: str, tmp_path: Path) -> None:
    ph = make_phantom(SHAPE, seed=18, noise_hu=0.0, orientation="random", max_oblique_deg=20.0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(ph.image.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ph.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(image, str(path))
    img = load(str(path))
    np.testing.assert_allclose(img.numpy(), ph.image, atol=1e-4)
    np.testing.assert_allclose(img.affine.numpy(), ph.affine, atol=1e-4)


# ----------------------------------------------------------------------------------------------- real data


def test_real_ct_series_with_a_gap_is_rejected(shared_data: Path) -> None:
    folder = shared_data / "monai-testing-data" / "CT_DICOM"
    with pytest.raises(
        InputError, match=r"CT_DICOM: missing slices: spacing between slices varies 1\.25-202\.50 mm"
    ):
        load(str(folder))
    report = find_cases(folder.parent)
    assert [(s.path, s.reason) for s in report.skipped if s.path == "CT_DICOM"] == [
        ("CT_DICOM", "missing slices: spacing between slices varies 1.25-202.50 mm")
    ]
    # the other entries of that folder are label maps, skipped as such
    assert all("label map" in s.reason for s in report.skipped if s.path != "CT_DICOM")


def test_real_ct_slices_without_the_gap_load_in_hounsfield_units(shared_data: Path) -> None:
    """The three contiguous slices of the real series: 1.25 mm apart, origin at the lowest slice."""
    folder = shared_data / "monai-testing-data" / "CT_DICOM"
    headers = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    contiguous = [h for h in headers if float(h.ImagePositionPatient[2]) > 0]
    assert len(contiguous) == 3
    img = load([str(h.filename) for h in contiguous[::-1]])  # any order: sorted by position
    assert tuple(img.shape) == (16, 16, 3)
    lowest = min(contiguous, key=lambda h: float(h.ImagePositionPatient[2]))
    x, y, z = (float(v) for v in lowest.ImagePositionPatient)
    px = [float(v) for v in lowest.PixelSpacing]
    expected = np.array(
        [[-px[1], 0.0, 0.0, -x], [0.0, -px[0], 0.0, -y], [0.0, 0.0, 1.25, z], [0.0, 0.0, 0.0, 1.0]]
    )
    np.testing.assert_allclose(img.affine.numpy(), expected, atol=1e-4)
    hu = lowest.pixel_array * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    np.testing.assert_array_equal(img.numpy()[:, :, 0], hu.T)


def test_reader_module_imports_lightly() -> None:
    """SimpleITK and pydicom are imported when a series is read, not with the module."""
    assert "sitk" not in vars(readers) and "pydicom" not in vars(readers)
