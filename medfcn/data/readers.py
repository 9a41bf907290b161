"""A MONAI ``ImageReader`` for DICOM series (and NRRD/MetaImage files), backed by SimpleITK.

Bundles name it by dotted path, which MONAI's ``LoadImage`` resolves with ``pydoc.locate``::

    {"_target_": "LoadImaged", "keys": "image", "image_only": true,
     "reader": "medfcn.data.readers.DicomSeriesReader"}

What it reads (``LoadImage`` passes a path or a list of paths):

* a DICOM series folder (the one image series in it; an error if there are several),
* a list of the DICOM files of one series (e.g. :meth:`medfcn.data.cases.Case.load_input`),
* a single NRRD/MetaImage file (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``), through SimpleITK,
* NIfTI files, handed to MONAI's ``NibabelReader`` (same values and metadata; through
  :class:`FastNibabelReader`: ``.nii.gz`` inflated by ISA-L, the voxels C-ordered
  float32 in one pass),
* enhanced multi-frame CT/MR/PET files (frames sorted and placed by their functional groups),
* a DICOM SEG listed as the label of an MSD dataset: the label map on the grid of the series it
  references (:func:`medfcn.data.dicom.seg_labels.read_seg_label_for_dataset`).

Why not MONAI's readers: ``ITKReader`` needs the ``itk`` package (~1.5 GB); ``PydicomReader`` returns a
z-flipped voxel order when InstanceNumber runs against the slice position. Here the files are sorted
by position along the slice normal and the geometry is validated before any pixel is read (the rules
are :func:`medfcn.data.dicom.geometry.validate_series`, shared with
:func:`medfcn.data.discovery.find_cases`): one orientation, one image size, no duplicate positions, no
gantry tilt (rejected), uniform slice spacing (no missing slices), grayscale single-frame slices. A
series discovery already checked (a :class:`~medfcn.data.cases.Case`'s files, or its
:class:`~medfcn.data.dicom.geometry.SeriesGeometry`) is not checked again: only its pixels are read.

Output conventions are those of MONAI's ``ITKReader``/``NibabelReader``: the array is ``(X, Y, Z)``
(DICOM columns, rows, slices in sorted order), float32, Hounsfield units for CT (RescaleSlope/Intercept
applied per file), stored values for MR without rescale tags; the metadata holds ``affine`` and
``original_affine`` (RAS by default, MONAI's convention: DICOM's LPS with the first two rows negated),
``spatial_shape``, ``original_channel_dim`` (``nan``: no channel), ``space`` and ``spacing``. No DICOM
attribute is copied into the metadata (no patient data can travel with the tensor).

Pixels are decoded by SimpleITK (GDCM: native, deflate, RLE, JPEG, JPEG-LS, JPEG 2000); when SimpleITK
cannot read a series, pydicom with the pylibjpeg/pyjpegls plugins decodes it file by file.

Errors are reported as :class:`medfcn.errors.InputError` with one line naming the series folder or
file. ``read`` never raises for input it accepts: it returns the failure and ``get_data`` raises it,
because ``LoadImage`` would otherwise quietly try its other readers, and MONAI's ``PydicomReader``
loads a series with missing slices as if nothing were wrong.

Example:
    >>> from monai.transforms import LoadImaged
    >>> load = LoadImaged("image", reader="medfcn.data.readers.DicomSeriesReader", image_only=True)
    >>> img = load({"image": "SCANS/series_a"})["image"]  # doctest: +SKIP
    >>> img.shape, img.affine  # (X, Y, Z), (4, 4) RAS  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from monai.data.image_reader import ImageReader, NibabelReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medfcn.data.dicom.geometry import SeriesGeometry, known_geometry, validate_series
from medfcn.data.dicom.headers import clip
from medfcn.data.dicom.seg_labels import is_dicom_seg, read_seg_label_for_dataset
from medfcn.data.dicom.series import file_headers, folder_headers, location, series_geometry
from medfcn.data.dicom.values import to_float
from medfcn.data.images import IMAGE_SUFFIXES, NIFTI_SUFFIXES, nifti_size_problem
from medfcn.data.nifti_io import GZIP_ERRORS, float32_voxels, read_nifti
from medfcn.data.walk import suffix
from medfcn.errors import InputError, one_line

__all__ = ["DicomSeriesReader", "FastNibabelReader", "series_geometry"]  # series_geometry: medfcn.data.dicom.series

Backend = Literal["auto", "simpleitk", "pydicom"]


class FastNibabelReader(NibabelReader):  # type: ignore[misc]
    """MONAI's ``NibabelReader`` with :func:`~medfcn.data.nifti_io.read_nifti` and the voxels as C-ordered
    float32, made in one pass (:func:`~medfcn.data.nifti_io.float32_voxels`, or ahead of time by
    :func:`~medfcn.data.nifti_io.read_nifti_ahead`).

    The same metadata and the same values as ``LoadImage(reader="NibabelReader", dtype=numpy.float32)``:
    the stored integers are transposed and cast to float32 (exact), and a scaled image (``scl_slope``,
    ``scl_inter``) is scaled slab by slab by nibabel's own ``apply_read_scaling`` (float64 there, then
    float32), never as one float64 copy of the volume (630 MB for a 512x512x300 CT). Big-endian voxels
    come in native byte order (MONAI's ``LoadImage`` cannot make a tensor of them); voxels stored as int32 or
    float64 keep nibabel's dtype, in C order.
    """

    def read(self, data: Any, **kwargs: Any) -> Any:
        from monai.data.utils import correct_nifti_header_if_necessary

        filenames = ensure_tuple(data)
        self.filenames = filenames  # what NibabelReader.read records for get_data
        options = {**self.kwargs, **kwargs}
        images = [correct_nifti_header_if_necessary(read_nifti(name, **options)) for name in filenames]
        return images if len(filenames) > 1 else images[0]

    def _get_array_data(self, img: Any, *args: Any) -> Any:
        return float32_voxels(img)


@dataclass
class _Series:
    geometry: SeriesGeometry
    where: str


@dataclass
class _Volume:
    image: Any  # SimpleITK.Image
    where: str


@dataclass
class _Delegated:
    reader: Any  # monai.data.NibabelReader
    image: Any
    where: str


@dataclass
class _SegLabel:
    path: Path


@dataclass
class _Failed:
    error: InputError


def _first_line(err: BaseException) -> str:
    """One line for a message: InputErrors as they are, other errors prefixed with their type."""
    if isinstance(err, InputError):
        return clip(one_line(err), 300)
    return f"{type(err).__name__}: {clip(one_line(err), 200)}" if str(err).strip() else type(err).__name__


def _is_nifti(path: str | os.PathLike[str]) -> bool:
    return suffix(Path(path).name, NIFTI_SUFFIXES) is not None


def _is_image(path: str | os.PathLike[str]) -> bool:
    return suffix(Path(path).name, IMAGE_SUFFIXES) is not None


def _read_simpleitk(geom: SeriesGeometry) -> np.ndarray:
    """``(X, Y, Z)`` float32 through SimpleITK/GDCM, files in the validated order (rescale applied)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in geom.headers])  # kept in this order (sorted by position)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RuntimeError(f"SimpleITK decoded {image.GetNumberOfComponentsPerPixel()} components per pixel")
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X)
    x, y, z = geom.shape
    if array.shape != (z, y, x):
        raise RuntimeError(f"SimpleITK returned shape {array.shape[::-1]}, headers say {geom.shape}")
    return array.transpose(2, 1, 0)


def _read_frames(geom: SeriesGeometry) -> np.ndarray:
    """``(X, Y, Z)`` float32 of an enhanced (multi-frame) series: each file decoded once by pydicom.

    The geometry's headers are the frames sorted along the slice normal (``h.frame`` is the 1-based frame
    number); each frame gets its own rescale from the Pixel Value Transformation functional group.
    """
    import pydicom

    x, y, z = geom.shape
    volume = np.empty((x, y, z), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}
    for k, h in enumerate(geom.headers):
        if h.path not in decoded:
            try:
                pixels = pydicom.dcmread(h.path, force=True).pixel_array
            except Exception as err:  # decoder plugins raise many types: name the file, keep one line
                raise RuntimeError(f"{h.path.name}: {_first_line(err)}") from err
            decoded[h.path] = pixels if pixels.ndim == 3 else pixels[None]
        frames = decoded[h.path]
        index = (h.frame or 1) - 1
        if frames.shape[1:] != (y, x) or index >= frames.shape[0]:
            raise RuntimeError(
                f"{h.path.name}: decoded {frames.shape[0]} frames of {frames.shape[1:]}, expected frame "
                f"{index + 1} of {(y, x)} (rows, columns)"
            )
        slope, intercept = h.rescale or (1.0, 0.0)
        volume[:, :, k] = (frames[index].astype(np.float32) * np.float32(slope) + np.float32(intercept)).T
    return volume


def _read_pydicom(geom: SeriesGeometry) -> np.ndarray:
    """``(X, Y, Z)`` float32 through pydicom and its decoder plugins, one file at a time."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    x, y, z = geom.shape
    volume = np.empty((x, y, z), dtype=np.float32)
    for k, h in enumerate(geom.headers):
        try:
            ds = pydicom.dcmread(h.path, force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # a raw data set without meta
                ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = UID(h.transfer_syntax)
            pixels = ds.pixel_array
        except Exception as err:  # decoder plugins raise many types: name the file, keep one line
            raise RuntimeError(f"{h.path.name}: {_first_line(err)}") from err
        if pixels.shape != (y, x):
            raise RuntimeError(
                f"{h.path.name}: decoded shape {pixels.shape}, expected {(y, x)} (rows, columns)"
            )
        slope = to_float(ds.get("RescaleSlope")) or 1.0  # 0 or absent: no scaling
        intercept = to_float(ds.get("RescaleIntercept")) or 0.0
        volume[:, :, k] = (pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)).T
    return volume


class DicomSeriesReader(ImageReader):
    """Read a DICOM series (folder or file list) or an NRRD/MetaImage file; NIfTI goes to MONAI's reader.

    Args:
        channel_dim: MONAI's meaning: ``None`` (default) marks the image as channel-less
            (``original_channel_dim`` = ``nan``), so ``EnsureChannelFirst`` adds one.
        affine_lps_to_ras: give the affine in RAS (MONAI's default, as ``ITKReader``); ``False`` keeps
            DICOM's LPS and sets ``space`` to LPS.
        backend: ``"auto"`` decodes with SimpleITK and falls back to pydicom when SimpleITK cannot read
            the series; ``"simpleitk"`` or ``"pydicom"`` force one decoder.
        kwargs: passed to MONAI's ``NibabelReader`` for NIfTI input.

    Example:
        >>> from monai.transforms import LoadImage
        >>> img = LoadImage(reader=DicomSeriesReader(), image_only=True)("study/series")  # doctest: +SKIP
        >>> img.shape, img.meta["space"]  # doctest: +SKIP
        (torch.Size([512, 512, 120]), 'RAS')
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        affine_lps_to_ras: bool = True,
        backend: Backend = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if backend not in ("auto", "simpleitk", "pydicom"):
            raise ValueError(f"backend must be 'auto', 'simpleitk' or 'pydicom', got {backend!r}")
        self._channel_arg = channel_dim
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.affine_lps_to_ras = affine_lps_to_ras
        self.backend: Backend = backend
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> bool:
        """True for a folder, a list of files, and single files that are not NIfTI.

        NIfTI is left to MONAI's ``NibabelReader`` when readers are chosen by suffix. NRRD/MetaImage
        files are accepted: without the ``itk`` package no MONAI reader reads ``.mha``.
        """
        names = ensure_tuple(filename)
        if not names:
            return False
        return not all(_is_nifti(n) for n in names)

    def read(self, data: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], **kwargs: Any) -> Any:
        """Validate the input and its geometry (headers only); the pixels are read by :meth:`get_data`.

        Args:
            data: a series folder, a list of DICOM files of one series, the
                :class:`~medfcn.data.dicom.geometry.SeriesGeometry` discovery checked (also found by its
                files: then no header is read again), an NRRD/MetaImage file, or NIfTI file(s)
                (delegated to ``NibabelReader``).
            kwargs: for ``NibabelReader`` (NIfTI only).

        Returns:
            An opaque object for :meth:`get_data`, which raises any error found here.
        """
        if isinstance(data, SeriesGeometry):
            return _Series(data, location(data.paths))
        paths = [Path(os.fspath(p)) for p in ensure_tuple(data)]
        shown = location(paths) if paths else "(no input)"
        if len(paths) > 1 or (paths and not paths[0].is_dir()):
            known = known_geometry(paths)  # a series discovery checked: its pixels only
            if known is not None:
                return _Series(known, shown)
        try:
            if not paths:
                raise InputError("no file or folder given")
            if all(_is_nifti(p) for p in paths):
                nib_reader = FastNibabelReader(channel_dim=self._channel_arg, **{**self.kwargs, **kwargs})
                try:
                    images = nib_reader.read([str(p) for p in paths])
                except GZIP_ERRORS as err:
                    raise InputError(f"truncated or corrupt file {shown}: {_first_line(err)}") from err
                for p, image in zip(paths, ensure_tuple(images), strict=True):
                    problem = nifti_size_problem(image, p)
                    if problem:
                        raise InputError(f"{p}: {problem}")
                return _Delegated(nib_reader, images, shown)
            if len(paths) == 1 and paths[0].is_dir():
                headers = folder_headers(paths[0])
            elif len(paths) == 1 and _is_image(paths[0]):
                return _Volume(self._read_volume(paths[0]), shown)
            elif len(paths) == 1 and paths[0].is_file() and is_dicom_seg(paths[0]):
                return _SegLabel(paths[0])  # a DICOM SEG as the label of an MSD dataset (training)
            else:
                headers = file_headers(paths)
            try:
                geometry = validate_series(headers)
            except InputError as err:
                raise InputError(f"DICOM series {shown}: {err}") from err
            return _Series(geometry, shown)
        except InputError as err:
            return _Failed(err)
        except Exception as err:  # unexpected library errors still become one clear line
            return _Failed(InputError(f"cannot read {shown}: {_first_line(err)}"))

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Read the pixels: ``(X, Y, Z)`` float32 array and MONAI metadata (see the module docstring).

        Raises:
            InputError: the input was rejected by :meth:`read`, or its pixels cannot be decoded.
        """
        if isinstance(img, _Failed):
            raise img.error
        if isinstance(img, _Delegated):
            try:
                nifti, meta = img.reader.get_data(img.image)
            except GZIP_ERRORS as err:
                raise InputError(f"truncated or corrupt file {img.where}: {_first_line(err)}") from err
            except Exception as err:  # nibabel/numpy raise many types for damaged files
                raise InputError(f"cannot read the voxels of {img.where}: {_first_line(err)}") from err
            return nifti, meta  # C-ordered float32 by FastNibabelReader
        if isinstance(img, _Volume):
            return self._volume_data(img)
        if isinstance(img, _SegLabel):
            label, affine = read_seg_label_for_dataset(img.path)
            x, y, z = label.shape
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            return label.astype(np.float32), self._meta(
                affine, (x, y, z), (float(spacing[0]), float(spacing[1]), float(spacing[2])), str(img.path)
            )
        if not isinstance(img, _Series):
            raise TypeError(
                f"DicomSeriesReader.get_data expects what read() returned, got {type(img).__name__}"
            )
        geom = img.geometry
        order = ["simpleitk", "pydicom"] if self.backend == "auto" else [self.backend]
        if any(h.frame is not None for h in geom.headers):
            order = ["frames"]  # enhanced: frames reordered by position, rescaled per frame
        errors: list[str] = []
        array: np.ndarray | None = None
        for backend in order:
            try:
                reader = {"simpleitk": _read_simpleitk, "pydicom": _read_pydicom, "frames": _read_frames}[
                    backend
                ]
                array = reader(geom)
                break
            except Exception as err:  # try the next decoder; report the last one's reason
                errors.append(_first_line(err))
        if array is None:
            from pydicom.uid import UID

            syntax = UID(geom.headers[0].transfer_syntax)
            raise InputError(
                f"DICOM series {img.where}: cannot decode the pixel data ({syntax.name}): {errors[-1]}"
            )
        return np.asarray(array, dtype=np.float32), self._meta(
            geom.affine, geom.shape, geom.spacing, img.where
        )

    # -- helpers
    def _meta(
        self,
        affine_ras: np.ndarray,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        where: str,
    ) -> dict[str, Any]:
        affine = affine_ras if self.affine_lps_to_ras else np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
        return {
            MetaKeys.AFFINE: np.array(affine, dtype=np.float64),
            MetaKeys.ORIGINAL_AFFINE: np.array(affine, dtype=np.float64),
            MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if self.channel_dim is None else self.channel_dim,
            "spacing": np.asarray(spacing, dtype=np.float64),
            "filename_or_obj": where,
        }

    @staticmethod
    def _read_volume(path: Path) -> Any:
        import SimpleITK as sitk

        if not path.exists():
            raise InputError(f"{path} does not exist")
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        try:
            info.ReadImageInformation()
        except RuntimeError as err:
            raise InputError(f"{path} is not a readable image file: {_first_line(err)}") from err
        if info.GetNumberOfComponents() != 1:
            raise InputError(
                f"{path} has {info.GetNumberOfComponents()} components per voxel: a grayscale volume expected"
            )
        if info.GetDimension() != 3:
            raise InputError(f"{path} is a {info.GetDimension()}D image: a 3D volume expected")
        return path  # the pixels are read in get_data

    def _volume_data(self, vol: _Volume) -> tuple[np.ndarray, dict[str, Any]]:
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(vol.image), sitk.sitkFloat32)
        except RuntimeError as err:
            raise InputError(f"cannot read {vol.where}: {_first_line(err)}") from err
        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
        lps[:3, 3] = image.GetOrigin()
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
        affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        sx, sy, sz = (float(s) for s in spacing)
        return array, self._meta(affine_ras, shape, (sx, sy, sz), vol.where)
