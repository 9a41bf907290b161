"""Enhanced (multi-frame) CT, MR and PET images: one file, one volume, geometry per frame.

Siemens XA, Philips and converters such as dcmqi/Slicer write a whole series as one *enhanced* object
(Enhanced CT ``1.2.840.10008.5.1.4.1.1.2.1``, Legacy Converted Enhanced CT ``...2.2``, Enhanced MR
``...4.1``, ...). Each frame's position lives in the Per-Frame Functional Groups (Plane Position
Sequence), orientation and pixel spacing in the Shared or Per-Frame groups (Plane Orientation, Pixel
Measures) and the rescale in the Pixel Value Transformation group.

:func:`frame_geometries` reads those into one :class:`FrameGeometry` per frame. Discovery turns each frame
into a pseudo-slice (:func:`expand_frames`), so a multi-frame series goes through exactly the same
geometry checks, slice sort and affine as a single-frame series, and :class:`~medfcn.data.cases.Case`
is the same record (``paths`` lists the file once). highdicom's ``Image.get_volume`` does the same job
for a whole file, but it neither reports *why* a file is unusable in one line nor shares our checks
(duplicate positions, tilt, missing frames), so medfcn reads the functional groups itself.

Example:
    >>> frames = frame_geometries(pydicom.dcmread("mf.dcm", stop_before_pixels=True))  # doctest: +SKIP
    >>> frames[0].position, frames[0].pixel_spacing  # doctest: +SKIP
    ((46.46, 5.02, -177.75), (0.7, 0.7))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom import uid

from medfcn.data.dicom.values import to_float, to_floats
from medfcn.errors import InputError

__all__ = [
    "ENHANCED_VOLUME_SOP_CLASSES",
    "FrameGeometry",
    "expand_frames",
    "frame_geometries",
    "frame_planes",
]

ENHANCED_VOLUME_SOP_CLASSES = frozenset(
    {
        uid.EnhancedCTImageStorage,
        uid.LegacyConvertedEnhancedCTImageStorage,
        uid.EnhancedMRImageStorage,
        uid.LegacyConvertedEnhancedMRImageStorage,
        uid.EnhancedPETImageStorage,
        uid.LegacyConvertedEnhancedPETImageStorage,
    }
)
"""Multi-frame SOP classes read as one volume (frames = slices); other multi-frame objects are skipped."""

H = TypeVar("H")


@dataclass(frozen=True)
class FrameGeometry:
    """Where one frame of an enhanced image lies, and how its stored values become image units.

    Attributes:
        number: 1-based frame number in the file (DICOM's ReferencedFrameNumber).
        position: ImagePositionPatient (LPS mm) of the frame's first pixel.
        orientation: ImageOrientationPatient (row then column direction cosines).
        pixel_spacing: PixelSpacing (between rows, between columns) in mm.
        slice_thickness: SliceThickness in mm, if given.
        spacing_between_slices: SpacingBetweenSlices in mm, if given.
        slope, intercept: RescaleSlope/RescaleIntercept (1, 0 when absent).
        stack_position: InStackPositionNumber, if given (breaks ties only).
    """

    number: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    stack_position: int | None = None


def _item(groups: Any, sequence: str) -> Any:
    """The first item of ``sequence`` inside a functional-groups item, or ``None``."""
    if groups is None:
        return None
    seq = groups.get(sequence)
    return seq[0] if seq else None


def _lookup(per_frame: Any, shared: Any, sequence: str, attribute: str) -> Any:
    """``attribute`` of ``sequence`` from the per-frame groups, else the shared groups (PS3.3 C.7.6.16)."""
    for groups in (per_frame, shared):
        item = _item(groups, sequence)
        if item is not None and attribute in item:
            return item.get(attribute)
    return None


def frame_geometries(ds: Any) -> list[FrameGeometry]:
    """One :class:`FrameGeometry` per frame of an enhanced image (header only, no pixel data needed).

    Args:
        ds: a pydicom dataset of a multi-frame image with functional groups.

    Returns:
        The frames in file order (``number`` 1..NumberOfFrames).

    Raises:
        InputError: one line saying what is missing: no Per-Frame Functional Groups, a frame without a
            Plane Position, no orientation or pixel spacing, or a frame count that disagrees.
    """
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if not per_frame:
        raise InputError(
            f"enhanced image without per-frame positions (no PerFrameFunctionalGroupsSequence for its "
            f"{n_frames} frames): cannot place the frames in space"
        )
    if len(per_frame) != n_frames:
        raise InputError(
            f"enhanced image with {len(per_frame)} per-frame functional groups for {n_frames} frames "
            "(NumberOfFrames): the header is inconsistent"
        )
    frames: list[FrameGeometry] = []
    missing_position: list[int] = []
    for i, groups in enumerate(per_frame, start=1):
        position = to_floats(_lookup(groups, None, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None:
            missing_position.append(i)
            continue
        orientation = to_floats(
            _lookup(groups, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        )
        spacing = to_floats(_lookup(groups, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
        if orientation is None:
            raise InputError(
                f"enhanced image without ImageOrientationPatient (Plane Orientation) for frame {i}"
            )
        if spacing is None:
            raise InputError(f"enhanced image without PixelSpacing (Pixel Measures) for frame {i}")
        slope = to_float(_lookup(groups, shared, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = to_float(_lookup(groups, shared, "PixelValueTransformationSequence", "RescaleIntercept"))
        stack = _lookup(groups, None, "FrameContentSequence", "InStackPositionNumber")
        frames.append(
            FrameGeometry(
                number=i,
                position=(position[0], position[1], position[2]),
                orientation=(
                    orientation[0],
                    orientation[1],
                    orientation[2],
                    orientation[3],
                    orientation[4],
                    orientation[5],
                ),
                pixel_spacing=(spacing[0], spacing[1]),
                slice_thickness=to_float(_lookup(groups, shared, "PixelMeasuresSequence", "SliceThickness")),
                spacing_between_slices=to_float(
                    _lookup(groups, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
                ),
                slope=slope if slope else 1.0,  # 0 or absent: no scaling (as for single-frame files)
                intercept=intercept or 0.0,
                stack_position=int(stack) if stack is not None else None,
            )
        )
    if missing_position:
        listed = ", ".join(str(i) for i in missing_position[:4]) + (
            " ..." if len(missing_position) > 4 else ""
        )
        raise InputError(
            f"enhanced image without per-frame positions: {len(missing_position)} of {n_frames} frames lack "
            f"PlanePositionSequence/ImagePositionPatient (frame {listed})"
        )
    return frames


def expand_frames(headers: Sequence[H]) -> list[H]:
    """Replace each enhanced header (one with ``frames``) by one pseudo single-frame header per frame.

    The headers are discovery's records (any dataclass with the fields ``frames``, ``frame_problem``,
    ``n_frames``, ``frame``, ``position``, ``orientation``, ``pixel_spacing``, ``slice_thickness``,
    ``spacing_between_slices``, ``instance_number`` and ``rescale``); single-frame headers pass through.

    Raises:
        InputError: a header whose functional groups could not be read (its ``frame_problem``).
    """
    out: list[H] = []
    for h in headers:
        problem = getattr(h, "frame_problem", None)
        if problem:
            raise InputError(problem)
        frames: Sequence[FrameGeometry] | None = getattr(h, "frames", None)
        if not frames:
            out.append(h)
            continue
        for f in frames:
            out.append(
                dataclasses.replace(
                    h,  # type: ignore[type-var]
                    frames=None,
                    n_frames=1,
                    frame=f.number,
                    position=f.position,
                    orientation=f.orientation,
                    pixel_spacing=f.pixel_spacing,
                    slice_thickness=f.slice_thickness,
                    spacing_between_slices=f.spacing_between_slices,
                    instance_number=f.stack_position if f.stack_position is not None else f.number,
                    rescale=(f.slope, f.intercept),
                )
            )
    return out


def frame_planes(ds: Any) -> list[tuple[tuple[float, ...], tuple[float, ...], tuple[float, float]]]:
    """``(position, orientation, pixel_spacing)`` of every frame of ``ds`` in file order.

    A single-frame image gives one plane from its own ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing; an enhanced image one per frame (:func:`frame_geometries`). Writers of derived
    objects (SEG, RTSTRUCT) use it to put each output frame on its source frame.

    Raises:
        InputError: the plane geometry tags are missing.
    """
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return [(f.position, f.orientation, f.pixel_spacing) for f in frame_geometries(ds)]
    position = to_floats(ds.get("ImagePositionPatient"), 3)
    orientation = to_floats(ds.get("ImageOrientationPatient"), 6)
    spacing = to_floats(ds.get("PixelSpacing"), 2)
    if position is None or orientation is None or spacing is None:
        raise InputError(
            "a source DICOM image lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
            "a derived object cannot be placed on it"
        )
    return [(position, orientation, (spacing[0], spacing[1]))]
