"""What kind of DICOM object a file holds: an image to segment, or something discovery skips (and why).

The SOP class and Modality of a header decide it: segmentations (SEG, Label Map), structured reports,
RT objects, presentation states, waveforms, encapsulated documents and objects without pixel data are
not images; secondary captures and localisers are images but not volumes to segment. Names of SOP classes
come from pydicom's UID dictionary (``pydicom.uid``).

Example:
    >>> non_image_reason(header)  # doctest: +SKIP
    'RTSTRUCT object (not an image)'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydicom import uid

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.data.dicom.headers import DicomHeader

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "LOCALISER_DESCRIPTION",
    "LOCALISER_TYPES",
    "NATIVE_SYNTAXES",
    "SECONDARY_CAPTURE_PREFIX",
    "SEGMENTATION_SOP_CLASSES",
    "non_image_reason",
    "sop_name",
]

DICOMDIR_SOP_CLASS = uid.MediaStorageDirectoryStorage
"""The SOP class of a DICOMDIR (ignored: the walk finds the files it indexes)."""

NATIVE_SYNTAXES = frozenset({uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian})
"""Uncompressed transfer syntaxes (no decoding check needed)."""

# pydicom 3.0 does not name the Label Map class yet (DICOM 2024c): its UID is spelled out.
SEGMENTATION_SOP_CLASSES = {
    uid.SegmentationStorage: "DICOM SEG",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
}
"""Segmentation Storage and Label Map Segmentation Storage, by the name used in skip reasons."""

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture Image Storage and its multi-frame variants (``...7.1`` to ``...7.4``)."""

LOCALISER_TYPES = frozenset({"LOCALIZER", "LOCALISER", "SCOUT", "TOPOGRAM", "SURVIEW"})
"""ImageType values of localisers and scouts."""

LOCALISER_DESCRIPTION = re.compile(r"\b(locali[sz]er|scout|topogram|surview|scanogram)\b", re.IGNORECASE)
"""SeriesDescription words of localisers (for scanners that do not say so in ImageType)."""

# Objects that carry no image (or no image of the patient's anatomy to segment).
_NON_IMAGE_MODALITIES = frozenset(
    {"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "PR", "KO", "REG", "DOC", "RWV", "PLAN",
     "FID", "RAW", "AU", "ECG", "HD"}
)  # fmt: skip
# SOP class families by UID prefix (pydicom.uid has one constant per class, not per family).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, SEG, registrations, surfaces
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
)


def sop_name(sop_class: str, *, full: bool = False) -> str:
    """pydicom's name of a SOP class (``"CT Image"``; with ``full``, ``"CT Image Storage"``)."""
    name = uid.UID(sop_class).name if sop_class else ""
    if not name or name == sop_class:
        return sop_class or "DICOM"
    return name if full else name.removesuffix(" Storage")


def non_image_reason(h: DicomHeader) -> str | None:
    """Why a DICOM object is not an image to segment (``None`` if it is one)."""
    if h.sop_class_uid in SEGMENTATION_SOP_CLASSES or h.modality == "SEG":
        name = SEGMENTATION_SOP_CLASSES.get(h.sop_class_uid, "DICOM SEG")
        return f"{name} object (a segmentation, not an image; medfcn evaluate/train read it as a label)"
    if h.modality in _NON_IMAGE_MODALITIES:
        return f"{h.modality} object (not an image)"
    if h.sop_class_uid.startswith(_NON_IMAGE_SOP_PREFIXES):
        return f"{sop_name(h.sop_class_uid)} object (not an image)"
    if not h.has_pixels:
        if (h.rows and h.columns) or "Image Storage" in sop_name(h.sop_class_uid, full=True):
            # an image object without its pixels: the file ended early (pydicom stops quietly at EOF)
            if h.at_eof:
                return "truncated or corrupt DICOM file (header ends before the pixel data)"
            return "DICOM image without pixel data"
        return f"{h.modality or sop_name(h.sop_class_uid)} object without pixel data (not an image)"
    return None
