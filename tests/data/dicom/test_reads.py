"""Each DICOM file of a series is read at most twice in a ``medfcn infer`` run: one header pass
(discovery) and one pixel pass (the reader); the SEG and RTSTRUCT writers take the case's geometry."""

from __future__ import annotations

import builtins
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from medfcn.data.dicom.rtstruct import write_rtstruct
from medfcn.data.dicom.seg import write_dicom_seg
from medfcn.data.discovery import find_cases
from medfcn.data.synthetic import make_phantom, write_dicom_series

LIVER = Path(__file__).resolve().parents[3] / "bundles" / "liver"


class _Reads:
    """Counts, per source file, Python opens (pydicom included) and SimpleITK pixel reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, files: list[Path]) -> None:
        self.files = {str(p.resolve()) for p in files}
        self.count: Counter[str] = Counter()
        real_open, real_io_open = builtins.open, io.open
        real_names = sitk.ImageSeriesReader.SetFileNames
        real_read = sitk.ReadImage

        def note(name: object) -> None:
            if isinstance(name, (str, Path)):
                key = str(Path(name).resolve())
                if key in self.files:
                    self.count[key] += 1

        def counted_open(file: object, *args: object, **kwargs: object) -> object:
            note(file)
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        def counted_io_open(file: object, *args: object, **kwargs: object) -> object:
            note(file)
            return real_io_open(file, *args, **kwargs)  # type: ignore[call-overload]

        def counted_names(reader: object, names: object) -> object:
            for name in names:  # type: ignore[attr-defined]
                note(name)
            return real_names(reader, names)

        def counted_read(name: object, *args: object, **kwargs: object) -> object:
            note(name)
            return real_read(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counted_open)
        monkeypatch.setattr(io, "open", counted_io_open)
        monkeypatch.setattr(sitk.ImageSeriesReader, "SetFileNames", counted_names)
        monkeypatch.setattr(sitk, "ReadImage", counted_read)


@pytest.fixture(params=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"], ids=["native", "rle"])
def series(tmp_path: Path, request: pytest.FixtureRequest) -> list[Path]:
    """A small oblique series, uncompressed or RLE (discovery decodes one file of a compressed series)."""
    ph = make_phantom((20, 18, 7), seed=3, orientation="random", max_oblique_deg=20.0, noise_hu=0.0)
    return write_dicom_series(
        ph.image, ph.affine, tmp_path / "IN" / "study" / "series", seed=3, transfer_syntax=request.param
    )


def test_discovery_read_and_writers_read_each_file_at_most_twice(
    series: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monai.transforms import LoadImage

    reads = _Reads(monkeypatch, series)
    with find_cases(tmp_path / "IN") as report:
        (case,) = report.cases
        assert case.geometry is not None and sorted(case.paths) == sorted(series)
        assert all(reads.count[str(p.resolve())] == 1 for p in series)  # the header pass
        image = LoadImage(reader="medfcn.data.readers.DicomSeriesReader", image_only=True)(case.load_input())
        label = (np.asarray(image) > 0).astype(np.uint8)
        affine = np.asarray(image.affine, dtype=np.float64)
        write_dicom_seg(
            label, affine, case.geometry, tmp_path / "seg.dcm", class_names={1: "liver"},
            algorithm_name="liver", algorithm_version="0.2.0",
        )  # fmt: skip
        write_rtstruct(
            label, affine, case.geometry, tmp_path / "rtstruct.dcm", classes={1: "liver"},
            algorithm_name="liver", algorithm_version="0.2.0",
        )  # fmt: skip
    assert set(reads.count) == reads.files
    assert max(reads.count.values()) == 2, reads.count  # header pass + pixel pass, nothing else
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series}


def test_segment_folder_reads_each_dicom_file_at_most_twice(
    series: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole ``medfcn infer`` path (segment_folder): discovery, loader, SEG, RTSTRUCT, stats."""
    from medfcn.bundle import copy_bundle
    from medfcn.engine.inference import Segmenter, segment_folder

    class Bright(torch.nn.Module):  # foreground where the input is bright: any fixed predictor will do
        out_channels = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.zeros_like(x), 100 * x, torch.full_like(x, -1e3)], dim=1)

    bundle = copy_bundle(LIVER, tmp_path / "liver")
    segmenter = Segmenter(bundle, device="cpu", network=Bright())
    reads = _Reads(monkeypatch, series)
    summary = segment_folder(segmenter, tmp_path / "IN", tmp_path / "OUT", progress=False, previews=False)
    assert summary.ok == 1, [(c.status, c.reason) for c in summary.cases]
    (row,) = summary.cases
    assert (tmp_path / "OUT" / row.id / "seg.dcm").is_file() and (tmp_path / "OUT" / row.id / "rtstruct.dcm").is_file()
    assert set(reads.count) == reads.files and max(reads.count.values()) == 2, reads.count


def test_writers_built_from_the_geometry_equal_those_from_the_files(series: list[Path], tmp_path: Path) -> None:
    """Source datasets built from discovery's records give the SEG/RTSTRUCT that reading the files gives."""
    from medfcn.data.dicom.sources import read_sources, source_datasets

    with find_cases(series[0].parent) as report:
        (case,) = report.cases
        built = source_datasets(case.geometry, "SEG")  # type: ignore[arg-type]
    read = read_sources(case.paths, "SEG")
    assert [str(d.SOPInstanceUID) for d in built] == [str(d.SOPInstanceUID) for d in read]
    label = np.zeros(case.shape, dtype=np.uint8)  # type: ignore[arg-type]
    label[5:12, 4:10, 1:6] = 1
    affine = case.geometry.affine  # type: ignore[union-attr]
    kwargs = {"class_names": {1: "liver"}, "algorithm_name": "liver", "algorithm_version": "0.2.0"}
    a = write_dicom_seg(label, affine, case.geometry, tmp_path / "a.dcm", **kwargs)  # type: ignore[arg-type]
    b = write_dicom_seg(label, affine, case.paths, tmp_path / "b.dcm", **kwargs)  # type: ignore[arg-type]

    def comparable(path: Path) -> dict[str, str]:
        ds = pydicom.dcmread(path)
        volatile = ("UID", "Date", "Time")
        return {
            e.keyword: str(e.value) for e in ds.iterall()
            if e.keyword and e.VR != "SQ" and not any(v in e.keyword for v in volatile)
        }  # fmt: skip

    assert comparable(a) == comparable(b)
    assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)
    ra = write_rtstruct(label, affine, case.geometry, tmp_path / "ra.dcm", classes={1: "liver"},
                        algorithm_name="liver", algorithm_version="0.2.0")  # type: ignore[arg-type]  # fmt: skip
    rb = write_rtstruct(label, affine, case.paths, tmp_path / "rb.dcm", classes={1: "liver"},
                        algorithm_name="liver", algorithm_version="0.2.0")  # fmt: skip
    assert comparable(ra) == comparable(rb)
