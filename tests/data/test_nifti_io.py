"""The fast NIfTI path: ISA-L inflation, one-pass C order + float32, slab-wise scaling: MONAI's values exactly."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from medfcn.data import ahead
from medfcn.data.nifti_io import (
    GZIP_ERRORS,
    FastNibabelReader,
    exact_in,
    gunzip,
    read_nifti,
    read_nifti_ahead,
    to_c_order,
)

AFFINE = np.array([[-0.8, 0.0, 0.1, 120.0], [0.0, 0.8, 0.0, -90.0], [0.0, 0.05, 2.5, 30.0], [0, 0, 0, 1.0]])


def test_gunzip_inflates_every_member_as_gzip_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 50, 200_000, dtype=np.int16).tobytes(), b"second member"]
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(parts[0]) + gzip.compress(parts[1]))  # a valid two-member gzip file
    assert gunzip(path) == gzip.decompress(path.read_bytes()) == parts[0] + parts[1]
    raw = path.read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(GZIP_ERRORS):
        gunzip(tmp_path / "cut.gz")


@pytest.mark.parametrize("klass", [nib.Nifti1Image, nib.Nifti2Image])
def test_read_nifti_equals_nibabel_load(klass: type, tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(0, 300, (23, 19, 11)).astype(np.float32)
    img = klass(data, AFFINE)
    img.header["descrip"] = b"medfcn test"
    path = tmp_path / "case.nii.gz"
    nib.save(img, str(path))
    ours, theirs = read_nifti(path), nib.load(str(path))
    assert type(ours) is type(theirs) is klass
    assert ours.get_filename() == theirs.get_filename() == str(path)
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    assert ours.header.binaryblock == theirs.header.binaryblock
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    nib.save(img, str(tmp_path / "plain.nii"))  # not gzipped: nibabel's own (memory-mapped) load
    assert read_nifti(tmp_path / "plain.nii").get_filename() == str(tmp_path / "plain.nii")


def test_exact_casts_only() -> None:
    f32 = np.dtype(np.float32)
    assert all(
        exact_in(np.dtype(t), f32) for t in (np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16)
    )
    assert not any(exact_in(np.dtype(t), f32) for t in (np.int32, np.uint32, np.int64, np.float64))


@pytest.mark.parametrize("dtype", ["int16", "uint8", "int32", "float64"])
def test_to_c_order_keeps_every_value(dtype: str) -> None:
    low, high = (0, 256) if dtype == "uint8" else (-3000, 3000)
    f = np.asfortranarray(np.random.default_rng(1).integers(low, high, (17, 13, 9)).astype(dtype))
    out = to_c_order(f, np.float32)
    assert out.flags.c_contiguous
    assert out.dtype == (
        np.float32 if dtype in ("int16", "uint8") else f.dtype
    )  # int32/float64: no lossy cast
    np.testing.assert_array_equal(out, f)
    np.testing.assert_array_equal(to_c_order(f[:, ::2], None), f[:, ::2])  # any other layout: a plain copy
    ro = f.copy(order="F")
    ro.flags.writeable = False  # a read-only memory map of a plain .nii
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(to_c_order(ro, np.float32), f)
    c = np.ascontiguousarray(f)
    assert to_c_order(c, None) is c
    by_numpy = to_c_order(f, np.float32, numpy_only=True)  # the read-ahead's path: the same array
    assert by_numpy.flags.c_contiguous and by_numpy.dtype == out.dtype
    np.testing.assert_array_equal(by_numpy, out)
    np.testing.assert_array_equal(to_c_order(f[:, ::2], np.float32, numpy_only=True), f[:, ::2])


@pytest.mark.parametrize(
    "stored, slope, inter", [("int16", 1.0, -1024.0), ("uint16", 0.1234567, -7.3), ("uint8", 3.0, 0.0)]
)
def test_fast_reader_equals_monai_reader_with_float32(
    stored: str, slope: float, inter: float, tmp_path: Path
) -> None:
    """Slab-wise scaling in nibabel's float64, then float32: bit for bit what MONAI makes of nibabel's float64."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 250, (31, 20, 17)).astype(stored)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_data_dtype(np.dtype(stored))
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    ours = LoadImage(reader=FastNibabelReader(), image_only=True, dtype=np.float32)(str(path))
    monai = LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)(str(path))
    assert ours.dtype == monai.dtype
    assert ours.is_contiguous()
    np.testing.assert_array_equal(ours.numpy(), monai.numpy())
    np.testing.assert_array_equal(ours.affine.numpy(), monai.affine.numpy())
    assert ours.meta["filename_or_obj"] == monai.meta["filename_or_obj"] == str(path)
    # read ahead (numpy, in a background thread): the very same array and metadata, and nothing left over
    assert read_nifti_ahead(path)
    before = ahead.pending()
    early = LoadImage(reader=FastNibabelReader(), image_only=True, dtype=np.float32)(str(path))
    assert before == [("nifti", os.path.realpath(path))] and ahead.pending() == []
    np.testing.assert_array_equal(early.numpy(), ours.numpy())
    assert early.is_contiguous() and early.dtype == ours.dtype
    assert set(early.meta) == set(ours.meta)
    for key, value in ours.meta.items():
        np.testing.assert_array_equal(np.asarray(early.meta[key]), np.asarray(value), err_msg=key)


@pytest.mark.parametrize("shape, dtype", [((41, 37, 23), np.uint8), ((19, 17, 11, 3), np.float32)])
def test_saved_nifti_has_nibabels_bytes_once_inflated(
    shape: tuple[int, ...], dtype: type, tmp_path: Path
) -> None:
    """ISA-L deflate and Fortran-ordered voxels: the file inflates to exactly what nibabel.save writes."""
    from medfcn.data.nifti_io import fortran_order, save_nifti_image

    array = np.random.default_rng(5).integers(0, 4, shape).astype(dtype)
    f = fortran_order(array)
    assert f.flags.f_contiguous and np.array_equal(f, array)
    ours, theirs = tmp_path / "ours.nii.gz", tmp_path / "theirs.nii.gz"
    save_nifti_image(nib.Nifti1Image(f, AFFINE), ours)
    nib.save(nib.Nifti1Image(array, AFFINE), str(theirs))
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(ours)).dataobj), array)
    save_nifti_image(nib.Nifti1Image(f, AFFINE), tmp_path / "plain.nii")  # not gzipped: nibabel's own writer
    assert (tmp_path / "plain.nii").read_bytes() == gzip.decompress(theirs.read_bytes())
