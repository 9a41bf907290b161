"""Recognise label maps among image files, so that ``medfcn infer`` does not segment segmentations.

An MSD dataset folder holds ``imagesTr/`` and ``labelsTr/`` side by side; a results folder holds masks
beside scans. Discovery asks two questions of every NIfTI/NRRD/MetaImage file:

* :func:`label_folder_reason`: is it inside a label folder (``labelsTr``, ``labelsTs`` or ``labels``
  next to an ``imagesTr``/``imagesTs``/``images`` folder)? Decided from names alone.
* :func:`label_map_reason`: do its voxels look like a label map: whole numbers from 0 to at most 255,
  0 present, and only a handful of distinct values (at most 16; at most 255 when the file name says
  ``seg``/``label``/``mask``/``gt``)? CT never qualifies (air is about -1000 HU), nor MR with its
  continuous intensities. The voxels are read only where that is cheap or the name suggests a label:
  8-bit files, files of at most :data:`READ_LIMIT_VOXELS` voxels, and label-like names.

Example:
    >>> label_folder_reason("Task04/labelsTr/hippocampus_001.nii.gz", {"Task04/imagesTr"})
    'in the label folder Task04/labelsTr of an MSD-style dataset (a label map, not a scan)'
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Any

import numpy as np

__all__ = ["READ_LIMIT_VOXELS", "label_folder_reason", "label_map_reason"]

READ_LIMIT_VOXELS = 4_000_000
"""Files up to this many voxels are read to check for a label map whatever their name (~0.05 s each)."""

_LABEL_FOLDERS = {"labelstr": "imagestr", "labelsts": "imagests", "labels": "images"}
_LABEL_NAME = re.compile(
    r"(^|[^a-z])(seg|segmentation|label|labels|labelmap|mask|gt)([^a-z]|$)", re.IGNORECASE
)
_MAX_VALUES, _MAX_VALUES_NAMED = 16, 255


def label_folder_reason(rel: str, folders: Collection[str]) -> str | None:
    """Why the file at ``rel`` is in a label folder, or ``None``.

    Args:
        rel: the file's path relative to the discovery root (POSIX).
        folders: every folder seen by the walk (POSIX, relative to the root), to find the sibling images
            folder.
    """
    lowered = {f.lower() for f in folders}
    parts = PurePosixPath(rel).parts[:-1]
    for depth in range(len(parts) - 1, -1, -1):
        name = parts[depth].lower()
        if name in _LABEL_FOLDERS:
            parent = "/".join(parts[:depth])
            sibling = f"{parent}/{_LABEL_FOLDERS[name]}" if parent else _LABEL_FOLDERS[name]
            if sibling.lower() in lowered:
                where = "/".join(parts[: depth + 1])
                return f"in the label folder {where} of an MSD-style dataset (a label map, not a scan)"
    return None


def label_map_reason(dataobj: Any, shape: tuple[int, ...], dtype: np.dtype[Any], name: str) -> str | None:
    """Why an image's voxels make it a label map, or ``None`` (also when it was not worth reading).

    Args:
        dataobj: the voxels (a nibabel array proxy or an array); read only if the rules above allow.
        shape: the image shape.
        dtype: the stored data type.
        name: the file name (label-like names allow more classes and larger files).
    """
    named = bool(_LABEL_NAME.search(name.split(".")[0]))
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        return None
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if not (named or dtype.itemsize == 1 or n_voxels <= READ_LIMIT_VOXELS):
        return None
    try:
        data = np.asarray(dataobj)
    except Exception:  # unreadable voxels are the reader's business, with a better message
        return None
    if data.size == 0:
        return None
    low, high = data.min(), data.max()
    if not (low == 0 and high <= 255):
        return None
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.rint(data)):
        return None
    values = np.unique(data.astype(np.int64) if data.dtype.itemsize > 1 else data)
    limit = _MAX_VALUES_NAMED if named else _MAX_VALUES
    if len(values) > limit or (len(values) < 2 and not named):
        return None
    shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return f"label map ({len(values)} integer values: {shown}), not a scan to segment"
