"""Compressed DICOM: every common transfer syntax decodes to the stored values, through both decoders.

Series are written by the tests: RLE, JPEG-LS, JPEG 2000 and deflate by pydicom's encoders; JPEG
Lossless (process 14, SV1) by a minimal Huffman encoder below (pydicom cannot encode it); JPEG baseline
(8-bit, lossy) by Pillow, encapsulated with pydicom. Damaged compressed data must give a clear reason
in discovery or a clear InputError when loading, never a crash or silently wrong pixels.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from medfcn.data import readers
from medfcn.data.discovery import find_cases
from medfcn.data.readers import DicomSeriesReader
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.errors import InputError

SHAPE = (36, 33, 6)  # JPEG 2000 needs >= 32x32 pixels per slice
READER = "medfcn.data.readers.DicomSeriesReader"


def encode_jpeg_lossless(image: np.ndarray, precision: int = 16) -> bytes:
    """Lossless JPEG, process 14, selection value 1 (predict from the left), of a 2D unsigned array.

    One Huffman table codes the 17 difference categories with 5-bit codes (category c -> code c);
    each code is followed by the category's extra bits (ITU T.81 H.1.2).
    """
    img = np.asarray(image, dtype=np.int64)
    rows, cols = img.shape
    pred = np.empty_like(img)
    pred[0, 0] = 1 << (precision - 1)  # first sample: 2^(P-1)
    pred[0, 1:] = img[0, :-1]  # first line: from the left
    pred[1:, 0] = img[:-1, 0]  # first column: from above
    pred[1:, 1:] = img[1:, :-1]  # elsewhere: selection value 1
    diff = (img - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    acc = nbits = 0
    out = bytearray()

    def put(value: int, n: int) -> None:
        nonlocal acc, nbits
        acc = (acc << n) | value
        nbits += n
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1

    for d in diff.tolist():
        category = 16 if d == -32768 else abs(d).bit_length()
        put(category, 5)
        if 0 < category < 16:
            put(d if d >= 0 else d + (1 << category) - 1, category)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad the last byte with ones

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    lengths = bytes([0, 0, 0, 0, 17] + [0] * 11)
    sof = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + lengths + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, Ss=1 (predictor), Se=0, Ah/Al=0
    return (
        b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(out) + b"\xff\xd9"
    )


def _recompress(files: list[Path], syntax: UID, encode: object) -> None:
    """Replace each file's native pixels by ``encode(pixels)`` encapsulated under ``syntax``."""
    for f in files:
        ds = pydicom.dcmread(f)
        frame = encode(ds)  # type: ignore[operator]
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(f, enforce_file_format=True)


def _jpeg_baseline(ds: pydicom.Dataset) -> bytes:
    """8-bit JPEG baseline of the slice (HU / 8 + 128), quality 95: CT squeezed into 8 bits by a slope."""
    from PIL import Image

    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    stored = np.clip(np.rint(hu / 8.0 + 128.0), 0, 255).astype(np.uint8)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 8, -1024
    buf = io.BytesIO()
    Image.fromarray(stored, mode="L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def phantom() -> object:
    return make_phantom(
        SHAPE, spacing=(0.9, 0.8, 2.5), seed=21, noise_hu=0.0, orientation="random", max_oblique_deg=8.0
    )


def _write(phantom: object, folder: Path, syntax: str) -> list[Path]:
    ph = phantom
    if syntax in (JPEGLosslessSV1, JPEGBaseline8Bit):
        files = write_dicom_series(ph.image, ph.affine, folder, seed=21)  # type: ignore[attr-defined]
        if syntax == JPEGLosslessSV1:
            _recompress(files, JPEGLosslessSV1, lambda ds: encode_jpeg_lossless(ds.pixel_array))
        else:
            _recompress(files, JPEGBaseline8Bit, _jpeg_baseline)
        return files
    return write_dicom_series(ph.image, ph.affine, folder, seed=21, transfer_syntax=syntax)  # type: ignore[attr-defined]


LOSSLESS = [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian, JPEGLosslessSV1]


def _expected(ph: object) -> tuple[np.ndarray, np.ndarray]:
    """The phantom in sorted-slice order (see test_readers.expected_grid) and its affine."""
    image, affine = np.rint(ph.image), ph.affine  # type: ignore[attr-defined]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    if np.linalg.det(lps[:3, :3]) < 0:
        flipped = affine.copy()
        flipped[:3, 2] = -affine[:3, 2]
        flipped[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, image.shape[2] - 1.0]) + affine[:3, 3]
        return image[:, :, ::-1], flipped
    return image, affine


@pytest.mark.parametrize("backend", ["auto", "simpleitk", "pydicom"])
@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda u: UID(u).keyword)
def test_lossless_syntaxes_decode_exactly(phantom: object, syntax: str, backend: str, tmp_path: Path) -> None:
    files = _write(phantom, tmp_path / "s", syntax)
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == syntax
    if UID(syntax).is_compressed:
        assert len(ds.PixelData) < SHAPE[0] * SHAPE[1] * 2  # really compressed
    report = find_cases(tmp_path)
    assert [(c.kind, c.n_slices, c.transfer_syntax) for c in report.cases] == [("dicom", SHAPE[2], syntax)]
    reader = DicomSeriesReader(backend=backend)  # type: ignore[arg-type]
    img = LoadImage(reader=reader, image_only=True)(report.cases[0].load_input())
    want, affine = _expected(phantom)
    np.testing.assert_array_equal(img.numpy(), want)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)


@pytest.mark.parametrize("backend", ["simpleitk", "pydicom"])
def test_jpeg_baseline_decodes_within_lossy_tolerance(phantom: object, backend: str, tmp_path: Path) -> None:
    files = _write(phantom, tmp_path / "s", JPEGBaseline8Bit)
    reader = DicomSeriesReader(backend=backend)  # type: ignore[arg-type]
    img = LoadImage(reader=reader, image_only=True)([str(f) for f in files]).numpy()
    want, _ = _expected(phantom)
    quantised = (np.clip(np.rint(want / 8.0 + 128.0), 0, 255)) * 8.0 - 1024.0  # what 8 bits can hold
    error = np.abs(img - quantised)
    # JPEG loss at quality 95 on sharp organ edges: about one grey level (8 HU) on average, a few at most
    assert error.mean() < 2 * 8.0 and error.max() <= 10 * 8.0, (error.mean(), error.max())
    assert np.corrcoef(img.ravel(), want.ravel())[0, 1] > 0.99


def test_auto_falls_back_to_pydicom_when_simpleitk_cannot_read(
    phantom: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _write(phantom, tmp_path / "s", JPEG2000Lossless)
    calls: list[str] = []

    def refuse(geom: object) -> np.ndarray:
        calls.append("simpleitk")
        raise RuntimeError("GDCM: no codec for this transfer syntax")

    monkeypatch.setattr(readers, "_read_simpleitk", refuse)
    img = LoadImage(reader=READER, image_only=True)([str(f) for f in files])
    assert calls == ["simpleitk"]
    np.testing.assert_array_equal(img.numpy(), _expected(phantom)[0])
    # Forcing SimpleITK alone then fails with the decoder's reason on one line.
    with pytest.raises(
        InputError, match=r"cannot decode the pixel data \(JPEG 2000 .*\): RuntimeError: GDCM"
    ):
        LoadImage(reader=DicomSeriesReader(backend="simpleitk"), image_only=True)([str(f) for f in files])


def _junk_codestream(f: Path) -> None:
    """Keep the file structure valid but replace the compressed frame by random bytes of equal length."""
    ds = pydicom.dcmread(f)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([bytes(np.random.default_rng(0).integers(0, 256, len(frame), dtype=np.uint8))])
    ds.save_as(f)


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: UID(u).keyword
)
def test_corrupt_compressed_series_is_skipped_with_a_reason(
    phantom: object, syntax: str, tmp_path: Path
) -> None:
    files = _write(phantom, tmp_path / "bad", syntax)
    for f in files:
        _junk_codestream(f)
    report = find_cases(tmp_path)
    assert report.cases == []
    [skip] = report.skipped
    assert skip.path == "bad"
    assert skip.reason.startswith(f"cannot decode {UID(syntax).name} pixel data (corrupt compressed data?)")
    assert "\n" not in skip.reason
    with pytest.raises(InputError, match=r"bad: cannot decode the pixel data"):
        LoadImage(reader=READER, image_only=True)(str(tmp_path / "bad"))


def test_one_corrupt_slice_is_caught_when_loading(phantom: object, tmp_path: Path) -> None:
    """Discovery decodes one frame per series (cheap); a damaged slice elsewhere fails the load, named."""
    files = _write(phantom, tmp_path / "s", JPEGLSLossless)
    report = find_cases(tmp_path)
    damaged = report.cases[0].paths[3]
    _junk_codestream(damaged)
    assert len(find_cases(tmp_path).cases) == 1
    with pytest.raises(InputError, match=rf"cannot decode the pixel data .*{damaged.name}"):
        LoadImage(reader=DicomSeriesReader(backend="pydicom"), image_only=True)(report.cases[0].load_input())
    with pytest.raises(InputError, match="cannot decode the pixel data"):
        LoadImage(reader=READER, image_only=True)([str(f) for f in files])


def test_truncated_compressed_file_is_reported(phantom: object, tmp_path: Path) -> None:
    files = _write(phantom, tmp_path / "cut", JPEG2000Lossless)
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 40])  # the sequence delimiter and the end of the codestream
    report = find_cases(tmp_path)
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("cut", "truncated DICOM file (compressed pixel data ends early) (1 of 6 files)")
    ]


def test_unsupported_compression_is_named(phantom: object, tmp_path: Path) -> None:
    files = _write(phantom, tmp_path / "video", JPEG2000Lossless)
    for f in files:  # declare a syntax nothing here decodes
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile
        ds.save_as(f)
    [skip] = find_cases(tmp_path).skipped
    assert skip.reason == "unsupported compression MPEG2 Main Profile / Main Level (no decoder installed)"
