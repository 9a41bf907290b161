"""In-memory images a :class:`medfcn.engine.inference.Segmenter` accepts beside paths, as MONAI MetaTensors.

As TotalSegmentator's Python API does, a scan already in memory may be given as a nibabel image, a
SimpleITK image, or an ``(array, affine)`` pair; each becomes a ``MetaTensor`` with its affine in RAS
millimetres (MONAI's convention), channel first when it has channels.

* nibabel (``Nifti1Image``, ``Nifti2Image``, ...): ``dataobj`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` and
  ``affine`` (already RAS).
* SimpleITK: the array is read in ITK's ``(x, y, z)`` index order; the affine is built from
  ``GetDirection``/``GetSpacing``/``GetOrigin`` (LPS) and flipped to RAS, as MONAI's ``ITKReader`` does.
* ``(array, affine)``: a numpy array or tensor ``(X, Y, Z)`` or ``(C, X, Y, Z)`` and a ``(4, 4)`` RAS affine.

Example:
    >>> import nibabel as nib  # doctest: +SKIP
    >>> seg(nib.load("ct.nii.gz"))  # doctest: +SKIP
    >>> seg((volume, affine))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medfcn.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor

__all__ = ["ACCEPTED", "in_memory_image"]

ACCEPTED = (
    "a file path, a DICOM series folder, a list of files, a MetaTensor, a nibabel image, a SimpleITK image "
    "or an (array, affine) pair"
)
"""What a Segmenter can be given, for error messages."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _describe(obj: Any) -> str:
    """A short description of ``obj`` for an error (its type and shape, never its contents)."""
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__module__}.{type(obj).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def _metatensor(array: Any, affine: Any, what: str) -> MetaTensor:
    import torch
    from monai.data import MetaTensor

    data = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    if tuple(aff.shape) != (4, 4):
        raise InputError(f"{what}: the affine must be a 4x4 matrix, got shape {tuple(aff.shape)}")
    if data.ndim not in (3, 4):
        raise InputError(f"{what}: expected an image of shape (X, Y, Z) or (C, X, Y, Z), got {tuple(data.shape)}")
    if not data.is_floating_point():
        data = data.float()
    return MetaTensor(data.clone(), affine=aff)


def _from_nibabel(img: Any) -> MetaTensor:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:  # NIfTI keeps channels (modalities, phases) on the last axis
        data = np.moveaxis(data, -1, 0)
    return _metatensor(data, img.affine, f"nibabel image of shape {img.shape}")


def _from_simpleitk(img: Any) -> MetaTensor:
    import SimpleITK as sitk

    dim = img.GetDimension()
    if dim != 3:
        raise InputError(f"SimpleITK image: expected 3 dimensions, got {dim}")
    array = sitk.GetArrayViewFromImage(img)  # (z, y, x[, c]): numpy's order is ITK's reversed
    array = np.moveaxis(array, -1, 0).transpose(0, 3, 2, 1) if img.GetNumberOfComponentsPerPixel() > 1 else array.T
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = img.GetOrigin()
    return _metatensor(np.ascontiguousarray(array), _LPS_TO_RAS @ lps, f"SimpleITK image of size {img.GetSize()}")


def in_memory_image(source: Any) -> MetaTensor | None:
    """``source`` as a MetaTensor when it is an in-memory image, ``None`` when it names files.

    Raises:
        InputError: an object that is neither (the message names its type, never its contents).
    """
    import os

    from monai.data import MetaTensor

    if isinstance(source, MetaTensor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return None
    if isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        return None
    if isinstance(source, tuple) and len(source) == 2 and hasattr(source[0], "shape"):
        return _metatensor(source[0], source[1], f"(array of shape {tuple(source[0].shape)}, affine)")
    if hasattr(source, "dataobj") and hasattr(source, "affine") and hasattr(source, "header"):
        return _from_nibabel(source)
    if type(source).__module__.startswith("SimpleITK") and hasattr(source, "GetDirection"):
        return _from_simpleitk(source)
    raise InputError(f"cannot segment a {_describe(source)}; pass {ACCEPTED}")
