"""NIfTI, NRRD and MetaImage files as cases: one file, one case, from its header.

Voxels are read only to tell a label map from a scan (:mod:`medfcn.data.labelmaps`); an uncompressed
NIfTI must hold what its header declares before anything allocates it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medfcn.data.cases import Case, Skipped
from medfcn.data.dicom.headers import clip
from medfcn.data.labelmaps import label_map_reason
from medfcn.data.walk import FoundFile
from medfcn.errors import one_line

__all__ = ["IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "image_case", "nifti_case", "nifti_size_problem"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""NIfTI file names (one case each)."""
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
"""NRRD and MetaImage file names (one case each, read by SimpleITK)."""


def nifti_size_problem(img: Any, path: Path) -> str | None:
    """An uncompressed NIfTI must hold what its header declares (one ``stat``, no voxel read).

    This refuses e.g. a 2-voxel file declaring 20000x20000x5000 voxels before anything tries to
    allocate 4 TB. Compressed files cannot be checked without decompressing them.
    """
    if path.name.lower().endswith(".gz"):
        return None
    shape = tuple(int(s) for s in img.shape)
    dtype = img.get_data_dtype()
    offset = int(getattr(img.dataobj, "offset", 352))
    need = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = path.stat().st_size
    if have >= need:
        return None
    dims = "x".join(str(s) for s in shape)
    return f"truncated NIfTI file: header declares {dims} {dtype} voxels ({need:.3g} bytes) but the file has {have} bytes"


def _volume_case(f: FoundFile, kind: Literal["nifti", "image"], shape: Sequence[int], spacing: Sequence[float]) -> Case:
    """The case of one volume file; 2D headers get a third axis of one slice (1 mm)."""
    s = [int(v) for v in shape[:3]] + [1] * (3 - len(shape[:3]))
    z = [float(v) for v in spacing[:3]] + [1.0] * (3 - len(spacing[:3]))
    return Case(
        id="", source=f.rel, kind=kind, paths=[f.path], n_slices=s[2], shape=(s[0], s[1], s[2]), spacing=(z[0], z[1], z[2])
    )


def nifti_case(f: FoundFile, skip_label_maps: bool = True) -> Case | Skipped:
    """A NIfTI file from its header (voxels are read only to tell a label map, see :mod:`.labelmaps`)."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(f.path))
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except PermissionError:
        return Skipped(f.rel, "permission denied")
    except Exception as err:  # nibabel raises many unrelated types for junk; report the first line
        return Skipped(f.rel, f"not a readable NIfTI file ({type(err).__name__}: {clip(one_line(err), 120)})")
    problem = nifti_size_problem(img, f.path)
    if problem:
        return Skipped(f.rel, problem)
    if skip_label_maps:
        label = label_map_reason(img.dataobj, shape, img.get_data_dtype(), f.path.name)
        if label:
            return Skipped(f.rel, label)
    return _volume_case(f, "nifti", shape, zooms)


def image_case(f: FoundFile, skip_label_maps: bool = True) -> Case | Skipped:
    """An NRRD/MetaImage file from its header (SimpleITK ``ReadImageInformation``)."""
    import SimpleITK as sitk

    if not os.access(f.path, os.R_OK):
        return Skipped(f.rel, "permission denied")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f.path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        # SimpleITK's message starts with the C++ source location; its last line says what failed
        last = [ln.strip() for ln in str(err).splitlines() if ln.strip()][-1:] or ["RuntimeError"]
        return Skipped(f.rel, f"not a readable image file ({last[0][:120]})")
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    size = tuple(int(s) for s in reader.GetSize())
    if comps != 1:
        return Skipped(f.rel, f"multi-component image ({comps} components per voxel): grayscale expected")
    if dim != 3:
        return Skipped(f.rel, f"{dim}D image (size {'x'.join(map(str, size))}): a 3D volume expected")
    spacing = tuple(float(s) for s in reader.GetSpacing())
    if skip_label_maps:
        dtype = np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, reader.GetPixelID())).dtype)
        voxels = _LazyImageVoxels(f.path)
        label = label_map_reason(voxels, size, dtype, f.path.name)
        if label:
            return Skipped(f.rel, label)
    return _volume_case(f, "image", size, spacing)


class _LazyImageVoxels:
    """The voxels of an NRRD/MetaImage file, read by SimpleITK only when ``np.asarray`` asks for them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(self.path)))
        return array if dtype is None else array.astype(dtype)
