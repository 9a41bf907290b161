"""The fast raw header scan gives the header pydicom's parse gives, and hands over what it is unsure of."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medfcn.data.dicom import headers as headers_module
from medfcn.data.dicom import rawscan
from medfcn.data.dicom.headers import DicomHeader, read_header
from medfcn.data.synthetic import make_phantom, write_dicom_series

_IGNORED = {"template", "stamp", "plane_text"}


def _fields(h: DicomHeader | None) -> dict[str, object]:
    assert h is not None
    return {k: v for k, v in dataclasses.asdict(h).items() if k not in _IGNORED}


def _both(path: Path) -> tuple[DicomHeader | None, DicomHeader | None]:
    """(fast scan, pydicom) headers of one file."""
    with open(path, "rb") as fp:
        size = path.stat().st_size
        head = fp.read(132)
        fast = rawscan.scan(fp, head, size, path, path.name, True)
        fp.seek(0)
        slow = headers_module._parse_pydicom(fp, size, path, path.name, True, True)
    return fast, slow


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("raw")
    ph = make_phantom((12, 10, 5), seed=4, orientation="random", max_oblique_deg=25.0, noise_hu=0.0)
    out = {
        "ct": write_dicom_series(ph.image, ph.affine, root / "ct", seed=4),
        "mr": write_dicom_series(ph.image, ph.affine, root / "mr", seed=5, modality="MR", signed=True),
        "implicit": write_dicom_series(ph.image, ph.affine, root / "imp", seed=6, transfer_syntax="1.2.840.10008.1.2"),
        "rle": write_dicom_series(ph.image, ph.affine, root / "rle", seed=7, transfer_syntax="1.2.840.10008.1.2.5"),
    }  # fmt: skip
    # sequences (defined and undefined length, nested), a Latin-1 description and private tags
    odd = root / "odd"
    odd.mkdir()
    for k, p in enumerate(out["ct"][:2]):
        ds = pydicom.dcmread(p)
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D4000", "SRT", "Abdomen"
        item = Dataset()
        item.AnatomicRegionSequence = Sequence([inner])
        ds.ProcedureCodeSequence = Sequence([item, item])
        ds.SeriesDescription = "Abdomen nativ Zürich"
        ds.add_new(0x00091010, "LO", "private value")
        ds.ReferencedImageSequence = Sequence([])
        ds.save_as(odd / f"IM{k}.dcm", enforce_file_format=True)
        ds["ProcedureCodeSequence"].is_undefined_length = True
        ds.save_as(odd / f"UL{k}.dcm", enforce_file_format=True)
    out["odd"] = sorted(odd.iterdir())
    return out


@pytest.mark.parametrize("kind", ["ct", "mr", "implicit", "rle", "odd"])
def test_fast_scan_equals_pydicom(slices: dict[str, list[Path]], kind: str) -> None:
    for path in slices[kind]:
        fast, slow = _both(path)
        assert fast is not None, f"{path.name}: the fast scan gave up"
        assert _fields(fast) == _fields(slow), path.name
        assert fast.template is not None and slow.template is not None
        assert pydicom.dcmread(__import__("io").BytesIO(fast.template)).SOPInstanceUID == slow_uid(path)


def slow_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_fast_scan_hands_damaged_and_unusual_files_to_pydicom(slices: dict[str, list[Path]], tmp_path: Path) -> None:
    source = slices["ct"][0].read_bytes()
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(source[:400])
    with open(truncated, "rb") as fp:
        fast = rawscan.scan(fp, fp.read(132), truncated.stat().st_size, truncated, "cut.dcm", False)
    assert fast is None  # pydicom gives the reason
    ds = pydicom.dcmread(slices["ct"][0])
    ds.SeriesDescription = "x"
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # escape sequences: pydicom's job
    ds.SeriesDescription = "\u3042"
    odd = tmp_path / "jp.dcm"
    ds.save_as(odd, enforce_file_format=True)
    header = read_header(odd, "jp.dcm")
    assert header is not None and header.series_description == str(pydicom.dcmread(odd).SeriesDescription)
    assert np.isfinite(header.position).all()  # type: ignore[arg-type]
