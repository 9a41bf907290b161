"""A fast DICOM header scan: the raw elements of one file, only the tags discovery needs.

pydicom builds a full dataset for every header (each element becomes an object, each sequence a tree);
discovery of an archive needs some twenty values per file. :func:`scan` walks the element headers of a
little-endian file with a preamble (explicit or implicit VR), decodes the tags of :data:`TAGS`, skips
every other value (sequences of undefined length by walking their items) and stops at the pixel data
element, which :func:`medfcn.data.dicom.headers.pixel_problem` checks. It gives up (returns ``None``) on
anything it is not sure of, and the caller reads the same open file with pydicom instead: enhanced
multi-frame objects (their functional groups are read by :mod:`medfcn.data.dicom.enhanced`), big-endian
and deflated files, DICOMDIRs, truncated or inconsistent element lengths, and text outside ASCII in a
character set other than ISO 8859-1 or UTF-8. The values it returns equal pydicom's
(``tests/data/dicom/test_rawscan.py`` compares them).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydicom import uid

from medfcn.data.dicom.enhanced import ENHANCED_VOLUME_SOP_CLASSES
from medfcn.data.dicom.objects import DICOMDIR_SOP_CLASS
from medfcn.data.dicom.values import to_float, to_floats, to_int

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.data.dicom.headers import DicomHeader

__all__ = ["TAGS", "scan"]

TAGS = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080060: "Modality",
    0x0008103E: "SeriesDescription",
    0x00180050: "SliceThickness",
    0x00180088: "SpacingBetweenSlices",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280030: "PixelSpacing",
    0x00280100: "BitsAllocated",
}
"""The tags read (tag -> keyword); everything else is skipped."""

_US = {0x00280002, 0x00280010, 0x00280011, 0x00280100}  # unsigned shorts; the rest is text
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_CHUNK = 16384
_PIXEL_DATA = 0x7FE00010
_LE_SYNTAXES: dict[str, bool] = {uid.ExplicitVRLittleEndian: False, uid.ImplicitVRLittleEndian: True}
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")
_HEAD8 = struct.Struct("<HH2sH")  # group, element, VR, short length (explicit VR)


class _GiveUp(Exception):
    """Not a file this scanner is sure of: pydicom reads it."""


class _Buffer:
    """The file's bytes from offset 0, read in chunks as the walk needs them."""

    def __init__(self, fp: BinaryIO, head: bytes, size: int) -> None:
        self.fp, self.size = fp, size
        self.data = head + fp.read(_CHUNK)

    def need(self, end: int) -> None:
        if end > len(self.data):
            if end > self.size:
                raise _GiveUp
            self.data += self.fp.read(max(end - len(self.data), _CHUNK))
            if end > len(self.data):
                raise _GiveUp


def _is_implicit(transfer_syntax: str) -> bool:
    if transfer_syntax in _LE_SYNTAXES:
        return _LE_SYNTAXES[transfer_syntax]
    ts = uid.UID(transfer_syntax)
    if not ts.is_transfer_syntax or not ts.is_little_endian or ts.is_deflated or ts.is_implicit_VR:
        raise _GiveUp
    return False  # encapsulated syntaxes: explicit VR little endian


def _element(buf: _Buffer, pos: int, implicit: bool) -> tuple[int, int, int, bytes | None]:
    """``(tag, header length, value length, VR)`` of the element at ``pos``."""
    buf.need(pos + 8)
    data = buf.data
    group, elem = _TAG.unpack_from(data, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        return tag, 8, _U32.unpack_from(data, pos + 4)[0], None
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        buf.need(pos + 12)
        return tag, 12, _U32.unpack_from(data, pos + 8)[0], vr
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _GiveUp  # not a VR: damaged, or pydicom's business
    return tag, 8, _U16.unpack_from(data, pos + 6)[0], vr


def _skip_sequence(buf: _Buffer, pos: int, implicit: bool) -> int:
    """The offset after an undefined-length sequence whose items start at ``pos``."""
    while True:
        buf.need(pos + 8)
        group, elem = _TAG.unpack_from(buf.data, pos)
        length = _U32.unpack_from(buf.data, pos + 4)[0]
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise _GiveUp
        if length != 0xFFFFFFFF:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimiter
            tag, header, length, vr = _element(buf, pos, implicit)
            if tag == 0xFFFEE00D:
                pos += 8
                break
            if length == 0xFFFFFFFF:
                if vr == b"UN":
                    raise _GiveUp
                pos = _skip_sequence(buf, pos + header, implicit)
            else:
                pos += header + length


def _text(raw: bytes, encoding: str) -> str:
    if b"\x1b" in raw or (encoding == "ascii" and not raw.isascii()):
        raise _GiveUp  # an escape sequence, or bytes of a character set not decoded here
    return raw.decode("ascii") if raw.isascii() else raw.decode(encoding)


def scan(fp: BinaryIO, head: bytes, size: int, path: Path, rel: str, keep_template: bool) -> DicomHeader | None:
    """The header of the open file ``fp`` (``head``: its first 132 bytes), or ``None`` to ask pydicom."""
    try:
        return _scan(_Buffer(fp, head, size), path, rel, keep_template)
    except (_GiveUp, struct.error, UnicodeDecodeError, ValueError):
        return None


def _scan(buf: _Buffer, path: Path, rel: str, keep_template: bool) -> DicomHeader | None:
    from medfcn.data.dicom.headers import DicomHeader, pixel_problem

    pos, meta_syntax, meta_class = 132, "", ""
    while True:  # file meta: explicit VR little endian
        buf.need(pos + 8)
        if _U16.unpack_from(buf.data, pos)[0] != 0x0002:
            break
        tag, header, length, _ = _element(buf, pos, False)
        if length == 0xFFFFFFFF:
            raise _GiveUp
        buf.need(pos + header + length)
        value = buf.data[pos + header : pos + header + length]
        if tag == 0x00020010:
            meta_syntax = value.decode("ascii").strip("\x00 ")
        elif tag == 0x00020002:
            meta_class = value.decode("ascii").strip("\x00 ")
        pos += header + length
    if not meta_syntax or meta_class in ENHANCED_VOLUME_SOP_CLASSES or meta_class == DICOMDIR_SOP_CLASS:
        raise _GiveUp
    implicit = _is_implicit(meta_syntax)
    raw: dict[int, bytes] = {}
    data, have = buf.data, len(buf.data)
    head8, u32, wanted, long_vrs = _HEAD8.unpack_from, _U32.unpack_from, TAGS, _LONG_VRS
    while True:  # the hot loop of discovery: one pass over the top-level elements
        if pos + 12 > have:
            buf.need(pos + 12)
            data, have = buf.data, len(buf.data)
        group, elem, vr, length = head8(data, pos)
        tag = group << 16 | elem
        if implicit:
            length, header, vr = u32(data, pos + 4)[0], 8, None
        elif vr in long_vrs:
            length, header = u32(data, pos + 8)[0], 12
        elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
            header = 8
        else:
            raise _GiveUp  # not a VR: damaged, or pydicom's business
        if tag >= _PIXEL_DATA or tag == 0xFFFCFFFC:
            break
        if length == 0xFFFFFFFF:
            if vr not in (None, b"SQ"):
                raise _GiveUp
            pos = _skip_sequence(buf, pos + header, implicit)
            data, have = buf.data, len(buf.data)
            continue
        end = pos + header + length
        if tag in wanted:
            if end > have:
                buf.need(end)
                data, have = buf.data, len(buf.data)
            raw[tag] = data[pos + header : end]
        elif end > buf.size:
            raise _GiveUp
        pos = end
    if tag != _PIXEL_DATA:
        raise _GiveUp  # no pixel data (or float pixel data): pydicom's reasons
    charsets = raw[0x00080005].decode("ascii").strip("\x00 ").split("\\") if 0x00080005 in raw else [""]
    # one plain character set decodes here; code extensions (ISO 2022 escapes) are pydicom's job
    encoding = _SIMPLE_CHARSETS.get(charsets[0].strip(), "ascii") if len(charsets) == 1 else "ascii"

    def text(tag: int) -> str:
        value = raw.get(tag)
        return _text(value, encoding).strip("\x00 ") if value else ""

    def values(tag: int) -> list[str]:
        value = text(tag)
        return [v.strip() for v in value.split("\\")] if value else []

    def ushort(tag: int, default: int) -> int:
        value = raw.get(tag)
        return _U16.unpack_from(value)[0] if value and len(value) >= 2 else default

    def number(tag: int) -> int | None:
        value = text(tag)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            as_float = float(value)  # pydicom's IS accepts "12.0"
            if not as_float.is_integer():
                raise _GiveUp from None
            return int(as_float)

    sop_class = text(0x00080016) or meta_class
    if sop_class in ENHANCED_VOLUME_SOP_CLASSES or sop_class == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
        raise _GiveUp
    rows, columns = ushort(0x00280010, 0), ushort(0x00280011, 0)
    samples = ushort(0x00280002, 1) or 1
    frames = to_int(number(0x00280008), 1) or 1
    buf.fp.seek(pos)
    has_pixels, problem = pixel_problem(
        buf.fp, buf.size, implicit=implicit, little=True, rows=rows, columns=columns, samples=samples,
        frames=frames, bits=ushort(0x00280100, 16) or 16,
    )  # fmt: skip
    description = text(0x0008103E)
    if "\\" in description:
        raise _GiveUp  # a multi-valued description: pydicom's spelling of it
    return DicomHeader(
        path=path,
        rel=rel,
        series_uid=text(0x0020000E),
        sop_instance_uid=text(0x00080018),
        sop_class_uid=sop_class,
        modality=text(0x00080060).upper() or None,
        image_type=tuple(v.upper() for v in values(0x00080008)),
        series_description=description or None,
        series_number=number(0x00200011),
        instance_number=number(0x00200013),
        position=to_floats(values(0x00200032), 3),  # type: ignore[arg-type]
        orientation=to_floats(values(0x00200037), 6),  # type: ignore[arg-type]
        pixel_spacing=to_floats(values(0x00280030), 2),  # type: ignore[arg-type]
        slice_thickness=to_float(text(0x00180050) or None),
        spacing_between_slices=to_float(text(0x00180088) or None),
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        photometric=text(0x00280004).upper(),
        n_frames=frames,
        transfer_syntax=meta_syntax,
        has_pixels=has_pixels,
        pixel_problem=problem,
        template=buf.data[:pos] if keep_template else None,
        plane_text=(text(0x00200032), text(0x00200037), text(0x00280030)),
    )
