"""One DICOM file's header: read once, only what discovery, the reader and the writers need.

:func:`read_header` returns a :class:`DicomHeader`, the record every later stage works from: discovery
groups and checks series with it, :class:`~medfcn.data.readers.DicomSeriesReader` reads the pixels of
the files it lists in its order, and the SEG/RTSTRUCT writers build their source references from it.
The file is opened once; the pixel data element is checked (present, long enough, its encapsulated items
intact) without reading the pixels.

Two parsers share that contract. The fast one (:mod:`medfcn.data.dicom.rawscan`) walks the raw elements
of little-endian files with a preamble, keeps the tags listed there and skips everything else; any file
it is not sure of (enhanced multi-frame, big endian, deflated, damaged, non-ASCII text in an unusual
character set) goes to pydicom (``dcmread(stop_before_pixels=True)``), which gives the precise reason
for a damaged file.

Example:
    >>> h = read_header(Path("IM0001.dcm"), "series/IM0001.dcm")  # doctest: +SKIP
    >>> h.series_uid, h.position, (h.rows, h.columns)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom import uid

from medfcn.data.dicom.enhanced import ENHANCED_VOLUME_SOP_CLASSES, FrameGeometry, frame_geometries
from medfcn.data.dicom.objects import DICOMDIR_SOP_CLASS, NATIVE_SYNTAXES
from medfcn.data.dicom.values import to_float, to_floats, to_int
from medfcn.errors import InputError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["DicomHeader", "NotDicom", "clip", "parse_template", "pixel_problem", "read_header"]


@dataclass
class DicomHeader:
    """What discovery, the reader and the writers need from one DICOM file.

    Patient data is never shown: reports use the case id (a hash of the SeriesInstanceUID) and the
    relative path. ``template`` (one file per series) is the raw header the SEG/RTSTRUCT writers copy the
    patient and study modules from, so they need not open a source file again.
    """

    path: Path
    rel: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    image_type: tuple[str, ...]
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    n_frames: int
    transfer_syntax: str
    has_pixels: bool
    pixel_problem: str | None
    at_eof: bool = False  # the header read consumed the whole file
    # Enhanced (multi-frame) volumes: the per-frame geometry, or why it cannot be read. After
    # expand_frames() each frame is a header of its own with its 1-based ``frame`` number and rescale.
    frames: tuple[FrameGeometry, ...] | None = None
    frame_problem: str | None = None
    frame: int | None = None
    rescale: tuple[float, float] | None = None
    template: bytes | None = None
    decode_checked: bool = False  # the first file of a compressed series: decoded in the header pass
    decode_problem: str | None = None  # why it could not be decoded (when decode_checked)
    plane_text: tuple[str, str, str] | None = None  # position, orientation, spacing as written (DS text)
    stamp: tuple[int, int] = (0, 0)  # size and modification time (ns) when read: a later change shows


class NotDicom(Exception):
    """The file is not DICOM, or not readable as DICOM (the message is the skip reason)."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut)."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a group 0x0002 or 0x0008 element (little endian)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x1000


def pixel_problem(
    fp: BinaryIO,
    size: int,
    *,
    implicit: bool,
    little: bool,
    rows: int,
    columns: int,
    samples: int,
    frames: int,
    bits: int,
) -> tuple[bool, str | None]:
    """Check the pixel data element at ``fp``'s position without reading the pixels.

    Native data must hold at least the declared length and what Rows x Columns x frames x BitsAllocated
    require; encapsulated (compressed) data must run to its sequence delimiter.

    Returns:
        ``(has_pixel_data, problem or None)``.
    """
    end = "<" if little else ">"
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return False, None
    group, element = struct.unpack(end + "HH", head[:4])
    if group != 0x7FE0:
        return False, None
    if element != 0x0010:
        return True, "float pixel data (parametric map): a CT/MR image expected"
    if implicit:
        length, header_len = struct.unpack(end + "I", head[4:8])[0], 8
    elif head[4:6] in (b"OB", b"OW", b"UN", b"OF", b"OD", b"OL", b"OV"):
        if len(head) < 12:
            return True, "truncated DICOM file (pixel data element cut short)"
        length, header_len = struct.unpack(end + "I", head[8:12])[0], 12
    else:
        length, header_len = struct.unpack(end + "H", head[6:8])[0], 8
    start = pos + header_len
    if length != 0xFFFFFFFF:
        available = size - start
        if available < length:
            return True, f"truncated DICOM file (pixel data shorter than declared: {available} of {length} bytes)"
        need = (rows * columns * samples * frames * bits + 7) // 8
        if length < need:
            return True, f"pixel data shorter than Rows x Columns x BitsAllocated require ({length} < {need} bytes)"
        return True, None
    # Encapsulated: walk the items (a handful per frame) up to the sequence delimiter.
    offset, fragments = start, 0
    while True:
        fp.seek(offset)
        item = fp.read(8)
        if len(item) < 8:
            return True, "truncated DICOM file (compressed pixel data ends early)"
        group, element, item_len = struct.unpack(end + "HHI", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or item_len == 0xFFFFFFFF:
            return True, "corrupt compressed pixel data (invalid item in the encapsulated pixel data)"
        offset += 8 + item_len
        fragments += 1
        if offset > size:
            return True, "truncated DICOM file (compressed pixel data ends early)"
    if fragments < 2:  # the basic offset table item plus at least one fragment
        return True, "corrupt compressed pixel data (no compressed frame)"
    return True, None


def read_header(path: Path, rel: str, seen_series: set[str] | None = None) -> DicomHeader | None:
    """Read one file's DICOM header (up to the pixel data), opening the file once.

    Args:
        path: the file.
        rel: its name in reports (relative to the discovery root).
        seen_series: series met so far; the first file of a series not in it keeps its raw header as
            :attr:`DicomHeader.template` and its UID is added.

    Returns:
        The header, or ``None`` for a DICOMDIR (ignored: the walk finds the files it indexes).

    Raises:
        NotDicom: not DICOM, unreadable, truncated or corrupt header (message: the skip reason).
    """
    try:
        return _parse(path, rel, seen_series)
    except NotDicom:
        raise
    except Exception as err:  # pydicom raises many types on damaged values: one bad file must not stop a scan
        raise NotDicom(f"corrupt DICOM header ({type(err).__name__}: {clip(one_line(err), 120)})") from err


def _first_of_series(header: DicomHeader | None, seen: set[str] | None, fp: BinaryIO) -> None:
    """Keep the raw header (and check decoding) of a series' first file; drop them for the others."""
    if header is None or seen is None:
        return
    if header.series_uid in seen:
        header.template = None
        return
    seen.add(header.series_uid)
    if header.transfer_syntax not in NATIVE_SYNTAXES and header.has_pixels and not header.pixel_problem:
        from medfcn.data.dicom.decoding import decode_problem

        fp.seek(0)  # the file is open: decode it from memory rather than open it again later
        header.decode_problem = decode_problem(header, fp.read())
        header.decode_checked = True


def _parse(path: Path, rel: str, seen: set[str] | None) -> DicomHeader | None:
    from medfcn.data.dicom.rawscan import scan

    keep_template = seen is not None
    try:
        with open(path, "rb") as fp:
            st = os.fstat(fp.fileno())
            size = st.st_size
            head = fp.read(132)
            if not head:
                raise NotDicom("empty file (0 bytes)")
            preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not preamble and not _looks_like_raw_dataset(head):
                raise NotDicom("not a DICOM or image file")
            header = None
            if preamble:
                header = scan(fp, head, size, path, rel, keep_template)
            if header is None:
                fp.seek(0)
                header = _parse_pydicom(fp, size, path, rel, preamble, keep_template)
            if header is not None:
                header.stamp = (size, st.st_mtime_ns)
            _first_of_series(header, seen, fp)
            return header
    except PermissionError as err:
        raise NotDicom("permission denied") from err
    except IsADirectoryError as err:  # pragma: no cover - the walk only passes files
        raise NotDicom("not a regular file") from err
    except OSError as err:
        raise NotDicom(f"cannot read file ({err.strerror or type(err).__name__})") from err


def _parse_pydicom(
    fp: BinaryIO, size: int, path: Path, rel: str, preamble: bool, keep_template: bool
) -> DicomHeader | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # force=True only for files that start like a raw data set (checked above): pydicom would
        # otherwise "parse" any junk into garbage elements.
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error, OverflowError) as err:
        if preamble:
            raise NotDicom(
                f"truncated or corrupt DICOM header ({type(err).__name__}: {clip(one_line(err), 120)})"
            ) from err
        raise NotDicom("not a DICOM or image file") from err
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop_class == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
        return None
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not syntax:  # a raw data set: pydicom found the encoding itself
        syntax = (
            uid.ImplicitVRLittleEndian
            if implicit
            else (uid.ExplicitVRLittleEndian if little is not False else uid.ExplicitVRBigEndian)
        )
    deflated = syntax == uid.DeflatedExplicitVRLittleEndian
    end = fp.tell()
    at_eof = end >= size and not deflated
    template = None
    if deflated:  # the body is a zlib stream: positions in the file mean nothing; the
        has_pixels, problem = True, None  # decoding test of discovery checks these files
    else:
        has_pixels, problem = pixel_problem(
            fp,
            size,
            implicit=bool(implicit),
            little=little is not False,
            rows=to_int(ds.get("Rows"), 0) or 0,
            columns=to_int(ds.get("Columns"), 0) or 0,
            samples=to_int(ds.get("SamplesPerPixel"), 1) or 1,
            frames=to_int(ds.get("NumberOfFrames"), 1) or 1,
            bits=to_int(ds.get("BitsAllocated"), 16) or 16,
        )
        if keep_template and preamble:
            fp.seek(0)
            template = fp.read(end)
    if not preamble and not (ds.get("SOPClassUID") or ds.get("SeriesInstanceUID")):
        raise NotDicom("not a DICOM or image file")
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    frames: tuple[FrameGeometry, ...] | None = None
    frame_problem: str | None = None
    if sop_class in ENHANCED_VOLUME_SOP_CLASSES:
        try:
            frames = tuple(frame_geometries(ds))
        except InputError as err:
            frame_problem = str(err)
        if frames and not image_type:  # enhanced objects put ImageType in the frame type groups
            image_type = tuple(str(v).upper() for v in (ds.get("FrameType") or ()))
    return DicomHeader(
        path=path,
        rel=rel,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        sop_class_uid=sop_class,
        modality=str(ds.get("Modality") or "").upper() or None,
        image_type=image_type,
        series_description=str(ds.get("SeriesDescription") or "") or None,
        series_number=to_int(ds.get("SeriesNumber")),
        instance_number=to_int(ds.get("InstanceNumber")),
        position=to_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=to_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        pixel_spacing=to_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=to_float(ds.get("SliceThickness")),
        spacing_between_slices=to_float(ds.get("SpacingBetweenSlices")),
        rows=to_int(ds.get("Rows"), 0) or 0,
        columns=to_int(ds.get("Columns"), 0) or 0,
        samples_per_pixel=to_int(ds.get("SamplesPerPixel"), 1) or 1,
        photometric=str(ds.get("PhotometricInterpretation") or "").upper(),
        n_frames=to_int(ds.get("NumberOfFrames"), 1) or 1,
        transfer_syntax=syntax,
        has_pixels=has_pixels,
        pixel_problem=problem,
        at_eof=at_eof,
        frames=frames,
        frame_problem=frame_problem,
        template=template,
        plane_text=_plane_text(ds),
    )


def _plane_text(ds: Any) -> tuple[str, str, str] | None:
    """ImagePositionPatient, ImageOrientationPatient and PixelSpacing as the file spells them."""
    out = []
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            return None
        out.append("\\".join(str(v) for v in value) if not isinstance(value, (str, bytes)) else str(value))
    return out[0], out[1], out[2]


def parse_template(header: DicomHeader) -> Dataset | None:
    """The pydicom dataset (no pixel data) of a header's :attr:`~DicomHeader.template`, if it has one."""
    if header.template is None:
        return None
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(header.template), stop_before_pixels=True)
