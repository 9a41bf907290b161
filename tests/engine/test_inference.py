"""segment_folder: a mixed scan folder in, aligned masks/SEGs/stats/summaries out; safe and resumable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _inference_support import ThresholdNet, copy_bundle, hu_to_input, tree_digest

from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.engine import inference
from medfcn.engine.inference import CASE_FILES, Segmenter, segment_folder
from medfcn.errors import InputError
from medfcn.outputs.case import save_nifti

T1_HU, T2_HU = 30.0, 200.0  # the fixed predictor: soft tissue and brighter -> 1, bone/contrast -> 2


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_bundle(tmp_path_factory.mktemp("bundle") / "liver")


@pytest.fixture(scope="module")
def segmenter(bundle: Path) -> Segmenter:
    probe = Segmenter(bundle, device="cpu", network=ThresholdNet(0.0, 1.0))
    return Segmenter(
        bundle, device="cpu", network=ThresholdNet(hu_to_input(probe, T1_HU), hu_to_input(probe, T2_HU))
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two DICOM series (one oblique), two NIfTI files (one int16, one oblique float) and junk."""
    root = tmp_path_factory.mktemp("scans") / "SCANS"
    phantoms = {}
    ph = make_phantom((40, 36, 14), seed=11, orientation="lps", noise_hu=0.0)
    write_dicom_series(ph.image, ph.affine, root / "study1" / "series_a", seed=11)
    phantoms["dicom_a"] = ph
    ph = make_phantom((36, 40, 12), seed=12, orientation="random", max_oblique_deg=10.0, noise_hu=0.0)
    write_dicom_series(
        ph.image, ph.affine, root / "study2" / "series b", seed=12, reverse_instance_numbers=True
    )
    phantoms["dicom_b"] = ph
    ph = make_phantom((38, 34, 16), seed=13, orientation="random", noise_hu=0.0)
    (root / "nifti").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.rint(ph.image).astype(np.int16), ph.affine), str(root / "nifti" / "ct_one.nii.gz")
    )
    phantoms["ct_one"] = ph
    ph = make_phantom(
        (33, 37, 15),
        seed=14,
        orientation="random",
        max_oblique_deg=12.0,
        spacing=(0.9, 0.9, 3.3),
        noise_hu=0.0,
    )
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(root / "ct_two.nii.gz"))
    phantoms["ct_two"] = ph
    (root / "notes.txt").write_text("not a scan\n")
    (root / "study1" / "README").write_text("junk\n")
    (root / "broken.dcm").write_bytes(b"\x00" * 50)
    return {"root": root, "phantoms": phantoms}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _agreement(mask: np.ndarray, mask_affine: np.ndarray, ph: object) -> float:
    """Fraction of mask voxels whose foreground matches thresholding the phantom at the same world point."""
    ijk = np.indices(mask.shape).reshape(3, -1).astype(np.float64)
    world = mask_affine[:3, :3] @ ijk + mask_affine[:3, 3:4]
    inv = np.linalg.inv(ph.affine)  # type: ignore[attr-defined]
    src = np.rint(inv[:3, :3] @ world + inv[:3, 3:4]).astype(int)
    image = ph.image  # type: ignore[attr-defined]
    inside = np.all((src >= 0) & (src < np.array(image.shape)[:, None]), axis=0)
    expected = image[src[0, inside], src[1, inside], src[2, inside]] > T1_HU
    return float(((mask.reshape(-1)[inside] > 0) == expected).mean())


def test_mixed_folder_end_to_end(segmenter: Segmenter, scans: dict, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from PIL import Image

    root: Path = scans["root"]
    before = tree_digest(root)
    out = tmp_path / "RESULTS"
    summary = segment_folder(segmenter, root, out, progress=False, volume_ranges_ml={"liver": (1.0, 5000.0)})
    assert tree_digest(root) == before  # inputs are only read

    assert summary.ok == 4 and summary.failed == 0, [(c.source, c.status, c.reason) for c in summary.cases]
    assert summary.skipped >= 2  # the text files (and the broken .dcm) are reported, not fatal
    skipped_sources = {c.source for c in summary.cases if c.status == "skipped"}
    assert "notes.txt" in skipped_sources
    ok = {c.source: c for c in summary.cases if c.status == "ok"}
    assert set(ok) == {"study1/series_a", "study2/series b", "nifti/ct_one.nii.gz", "ct_two.nii.gz"}

    for source, row in ok.items():
        case_dir = out / row.id
        names = {p.name for p in case_dir.iterdir()}
        expected = {"mask.nii.gz", "preview.png", "stats.json", "done.json"} | (
            {"seg.dcm", "rtstruct.dcm"} if row.kind == "dicom" else set()
        )
        assert names == expected, (source, names)
        mask_img = nib.load(str(case_dir / "mask.nii.gz"))
        mask = np.asarray(mask_img.dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
        if row.kind == "nifti":  # the mask has the input's own grid
            src_img = nib.load(str(root / source))
            assert mask.shape == src_img.shape
            np.testing.assert_allclose(mask_img.affine, src_img.affine, atol=1e-5)
        key = {"study1/series_a": "dicom_a", "study2/series b": "dicom_b"}.get(
            source, Path(source).name.split(".")[0]
        )
        ph = scans["phantoms"][key]
        # the thresholding predictor's mask overlays the scan it came from (world coordinates)
        agreement = _agreement(mask, mask_img.affine, ph)
        assert agreement > 0.93, source
        if row.kind == "dicom":
            assert sorted(mask.shape) == sorted(ph.image.shape)
            assert (
                abs(abs(np.linalg.det(mask_img.affine[:3, :3])) - abs(np.linalg.det(ph.affine[:3, :3])))
                < 1e-3
            )

        stats = json.loads((case_dir / "stats.json").read_text())
        vox_ml = abs(np.linalg.det(mask_img.affine[:3, :3])) / 1000.0
        for name, value in (("liver", 1), ("tumour", 2)):
            count = int((mask == value).sum())
            assert stats["classes"][name]["voxels"] == count
            assert stats["classes"][name]["volume_ml"] == pytest.approx(count * vox_ml, rel=1e-5)
            assert row.volumes_ml[name] == pytest.approx(count * vox_ml, rel=1e-5)
        assert stats["classes"]["liver"]["voxels"] > 0 and stats["classes"]["tumour"]["voxels"] > 0
        assert stats["classes"]["tumour"]["mean_intensity"] > T2_HU - 50  # class 2 is the bright voxels
        done = json.loads((case_dir / "done.json").read_text())
        assert done["id"] == row.id and "mask.nii.gz" in done["files"]
        preview = Image.open(case_dir / "preview.png")
        assert preview.format == "PNG" and preview.height > 100 and preview.width > 3 * preview.height

        if row.kind == "dicom":
            seg = hd.seg.segread(case_dir / "seg.dcm")
            series_dir = root / source
            sources = {
                pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                for p in sorted(series_dir.iterdir())
            }
            assert (
                seg.ReferencedSeriesSequence[0].SeriesInstanceUID
                == pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True).SeriesInstanceUID
            )
            referenced = [u for _, _, u in seg.get_source_image_uids()]
            assert set(referenced) <= set(sources) and referenced
            for fg in seg.PerFrameFunctionalGroupsSequence:
                uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                src = pydicom.dcmread(sources[uid])
                assert np.allclose(
                    [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient],
                    [float(v) for v in src.ImagePositionPatient],
                )
                # the frame's pixels agree with thresholding the very source image they reference
                number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                got = seg.get_pixels_by_source_instance(
                    [uid], segment_numbers=[number], ignore_spatial_locations=True
                )[0, :, :, 0]
                hu = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)
                want = (hu > T2_HU) if number == 2 else ((hu > T1_HU) & (hu <= T2_HU))
                assert (got.astype(bool) == want).mean() > 0.9

    rows = _rows(out)
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    assert {"id", "source", "kind", "status", "reason", "seconds", "liver_ml", "tumour_ml"} <= set(rows[0])
    assert json.loads((out / "summary.json").read_text())["cases"][0]["status"] == "ok"
    run = json.loads((out / "run.json").read_text())
    assert run["bundle"]["name"] == "liver" and run["device"] == "cpu"
    assert run["huge_pages"].startswith(("on", "off", "unknown"))  # medfcn.memory.huge_pages
    assert {"medfcn", "monai", "torch"} <= set(run["versions"]) and run["counts"]["ok"] == 4
    assert run["timings"]["total_s"] > 0
    # nothing but the results: no temp files anywhere, no names taken from patient data
    assert not [p for p in out.rglob(".*")]
    assert "SYNTHETIC" not in " ".join(str(p) for p in out.rglob("*"))

    # a second run keeps everything and redoes nothing
    again = segment_folder(segmenter, root, out, progress=False)
    assert again.ok == 4 and all("earlier run" in c.reason for c in again.cases if c.status == "ok")
    assert {c.id: c.volumes_ml for c in again.cases if c.status == "ok"} == {
        c.id: pytest.approx(c.volumes_ml) for c in summary.cases if c.status == "ok"
    }


def test_interrupted_run_resumes_with_no_corrupt_outputs(
    segmenter: Segmenter, scans: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_write = inference.write_case
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the second case: its mask is written, then the run is killed
            case_dir = args[3]
            save_nifti(case_dir / CASE_FILES["mask"], np.zeros((2, 2, 2), np.uint8), np.eye(4))  # type: ignore[operator]
            (case_dir / ".stats.abc.tmp.json").write_text("{")  # type: ignore[operator]
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(inference, "write_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segment_folder(segmenter, scans["root"], out, progress=False)
    done = [p.parent for p in out.glob("*/done.json")]
    assert len(done) == 1
    # the interrupted case left nothing behind: no half-written mask, no temp files
    leftovers = [p for p in out.iterdir() if p.is_dir() and p not in done]
    assert all(not any(p.iterdir()) for p in leftovers)
    assert not (out / "summary.csv").exists()

    monkeypatch.setattr(inference, "write_case", real_write)
    first_mtime = (done[0] / "mask.nii.gz").stat().st_mtime_ns
    summary = segment_folder(segmenter, scans["root"], out, progress=False)
    assert summary.ok == 4 and summary.failed == 0
    assert (done[0] / "mask.nii.gz").stat().st_mtime_ns == first_mtime  # kept, not redone
    for case_dir in (out / c.id for c in summary.cases if c.status == "ok"):
        assert (case_dir / "done.json").is_file()
        assert np.asarray(nib.load(str(case_dir / "mask.nii.gz")).dataobj).ndim == 3
        json.loads((case_dir / "stats.json").read_text())
    assert not list(out.rglob(".*"))

    redo = segment_folder(segmenter, scans["root"], out, progress=False, overwrite=True, previews=False)
    assert redo.ok == 4 and all(c.reason == "" for c in redo.cases if c.status == "ok")
    assert (done[0] / "mask.nii.gz").stat().st_mtime_ns != first_mtime
    assert not (done[0] / "preview.png").exists()


def test_a_failing_case_is_reported_and_the_others_finish(
    segmenter: Segmenter, scans: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_predict = Segmenter.predict
    seen: list[int] = []

    def flaky(self: Segmenter, loaded: object) -> object:
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("simulated out of memory")
        return real_predict(self, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(Segmenter, "predict", flaky)
    out = tmp_path / "out"
    summary = segment_folder(segmenter, scans["root"], out, progress=False, save_probabilities=True)
    assert summary.ok == 3 and summary.failed == 1
    bad = next(c for c in summary.cases if c.status == "failed")
    assert bad.reason == "RuntimeError: simulated out of memory"
    assert not (out / bad.id).exists()  # no partial output
    good = next(c for c in summary.cases if c.status == "ok")
    probs = nib.load(str(out / good.id / "probabilities.nii.gz"))
    assert probs.shape[-1] == 3 and probs.shape[:3] == nib.load(str(out / good.id / "mask.nii.gz")).shape
    assert [r["status"] for r in _rows(out)].count("failed") == 1


def test_single_file_list_file_and_refusals(segmenter: Segmenter, scans: dict, tmp_path: Path) -> None:
    root: Path = scans["root"]
    one = segment_folder(segmenter, root / "ct_two.nii.gz", tmp_path / "one", progress=False, previews=False)
    assert [c.id for c in one.cases if c.status == "ok"] == ["ct_two"]
    series = segment_folder(segmenter, root / "study1" / "series_a", tmp_path / "series", progress=False)
    assert series.ok == 1 and (tmp_path / "series" / series.cases[0].id / "seg.dcm").is_file()

    listing = tmp_path / "cases.txt"
    listing.write_text(
        f"# two scans\n{root / 'nifti' / 'ct_one.nii.gz'}\n\n{root / 'study2' / 'series b'}\n{tmp_path / 'gone.nii.gz'}\n"
    )
    listed = segment_folder(segmenter, listing, tmp_path / "listed", progress=False, previews=False)
    assert listed.ok == 2
    assert any(c.status == "skipped" and "does not exist" in c.reason for c in listed.cases)

    # one scan file: results may go beside it (only the file itself is input), and the file is untouched
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "ct_two.nii.gz").write_bytes((root / "ct_two.nii.gz").read_bytes())
    digest = tree_digest(beside)
    next_to = segment_folder(segmenter, beside / "ct_two.nii.gz", beside / "results", progress=False)
    assert next_to.ok == 1 and (beside / "results" / "ct_two" / "done.json").is_file()
    assert {k: v for k, v in tree_digest(beside).items() if not k.startswith("results")} == digest

    with pytest.raises(InputError, match="inside the input"):
        segment_folder(segmenter, root, root / "results", progress=False)
    assert not (root / "results").exists()
    with pytest.raises(InputError, match="does not exist"):
        segment_folder(segmenter, tmp_path / "nowhere", tmp_path / "x", progress=False)


def test_a_discovery_made_before_is_used_and_the_first_scan_is_read_ahead(
    segmenter: Segmenter, scans: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medfcn.data import ahead, discovery, nifti_io

    root: Path = scans["root"]
    reads: list[str] = []
    real = nifti_io._read_nifti
    monkeypatch.setattr(nifti_io, "_read_nifti", lambda p, **k: reads.append(str(p)) or real(p, **k))
    report = inference.discover(root / "nifti")  # what `medfcn infer` runs before importing PyTorch
    first = inference.read_ahead(report.cases, tmp_path / "out")
    assert first is not None and first.id == "ct_one"
    dicom = inference.discover(root / "study1")  # DICOM series are not read ahead
    assert dicom.cases and inference.read_ahead(dicom.cases, tmp_path / "d") is None
    with monkeypatch.context() as patch:
        patch.setattr(discovery, "find_cases", lambda *a, **k: pytest.fail("discovered twice"))
        summary = segment_folder(segmenter, root / "nifti", tmp_path / "out", progress=False, discovered=report)
    assert summary.ok == 1 and (tmp_path / "out" / "ct_one" / "done.json").is_file()
    assert reads == [str(first.paths[0].resolve())]  # read once, by the read-ahead; the load took it
    assert ahead.pending() == []  # and nothing is held after the run
    ref = segment_folder(segmenter, root / "nifti" / "ct_one.nii.gz", tmp_path / "ref", progress=False)
    assert ref.ok == 1 and len(reads) == 2  # read by the load itself this time
    masks = [np.asarray(nib.load(d / "ct_one" / "mask.nii.gz").dataobj) for d in (tmp_path / "out", tmp_path / "ref")]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert inference.read_ahead(report.cases, tmp_path / "out") is None  # a finished case is not read again
    assert inference.read_ahead(report.cases, tmp_path / "out", overwrite=True) is first
    ahead.forget()


@pytest.mark.slow
def test_killed_subprocess_resumes(bundle: Path, scans: dict, tmp_path: Path) -> None:
    """A real SIGKILL mid-folder (the CLI in a subprocess), then the same command again."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medfcn", "infer", "--bundle", str(bundle), "--input", str(scans["root"]),
           "--output", str(out), "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/done.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    finished_first = len(list(out.glob("*/done.json")))
    assert finished_first >= 1
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [r for r in _rows(out) if r["status"] == "ok"]
    assert len(rows) == 4
    assert sum("earlier run" in r["reason"] for r in rows) >= finished_first
    for r in rows:
        assert np.asarray(nib.load(str(out / r["id"] / "mask.nii.gz")).dataobj).ndim == 3
    assert not list(out.rglob(".*"))


@pytest.mark.slow
def test_torchrun_splits_cases_across_two_ranks(bundle: Path, scans: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medfcn",
           "infer", "--bundle", str(bundle), "--input", str(scans["root"]), "--output", str(out),
           "--device", "cpu", "--quiet", "--no-previews"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(out)
    assert sum(r["status"] == "ok" for r in rows) == 4
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["world_size"] == 2 and run["counts"]["ok"] == 4
    for r in rows:
        if r["status"] == "ok":
            assert (out / r["id"] / "done.json").is_file()
