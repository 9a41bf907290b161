"""Can the pixels of a compressed DICOM series be decoded? One file per series answers for discovery.

Discovery decodes the first file of each compressed series it meets in the header pass, from the bytes
of the file it has open (:func:`medfcn.data.dicom.headers.read_header`), so undecodable series are
reported before any weights load and no file is opened again for the check. The reader reports a damaged
frame elsewhere in the series when it loads it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from medfcn.data.dicom.headers import clip
from medfcn.errors import one_line

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.data.dicom.headers import DicomHeader

__all__ = ["decode_problem"]


def decode_problem(h: DicomHeader, data: bytes | None = None) -> str | None:
    """Decode a compressed or deflated file; ``None`` if pydicom or SimpleITK can.

    Args:
        h: its header.
        data: the whole file, when the caller has it open already (the header pass): then only a file
            pydicom cannot decode is opened again, by SimpleITK.
    """
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(h.transfer_syntax)
    name = syntax.name if syntax.name != str(syntax) else str(syntax)
    try:
        ds = pydicom.dcmread(io.BytesIO(data) if data is not None else h.path, force=True)
        ds.pixel_array  # noqa: B018  (decoding is the check)
        return None
    except Exception as err:  # decoder plugins raise many types; SimpleITK gets a chance below
        py_error: Exception = err
    try:
        import SimpleITK as sitk

        sitk.ReadImage(str(h.path))
        return None
    except RuntimeError:
        pass
    try:
        supported = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        supported = False
    if not supported:
        return f"unsupported compression {name} (no decoder installed)"
    text = clip(one_line(py_error), 160)
    return f"cannot decode {name} pixel data (corrupt compressed data?): {text}"
