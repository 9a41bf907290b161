"""The MONAI Deploy app, run for real (holoscan + the SDK's operators), agrees with ``medfcn infer``.

The SDK lives in its own virtual environment (``workflows/deploy_venv.py``; built on first use from
PyPI, then reused), because installing it makes every ``import monai`` import ``monai.deploy``. The app
runs there as a subprocess on a synthetic CT study with three series — the CT volume, a 4-slice CT
scout and an MR volume — so series selection must pick the volume. Its DICOM SEG is read back with
highdicom and compared voxel for voxel with what ``medfcn infer`` (``segment_folder``) writes for the
same series: with medfcn's own DICOM SEG instance by instance, and with medfcn's NIfTI mask through
the DICOM geometry (every NIfTI voxel's centre mapped to its source pixel).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "workflows" / "liver_seg_app"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy")]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic study: CT volume (series 1), CT scout with 4 slices (2), MR volume (3).

    The volume has non-square pixels, which the SDK's DICOMSeriesToVolumeOperator gets wrong unless
    the app's SeriesToVolume corrects it (measured: 1/3 of the voxels differ without the fix).
    """
    from medfcn.data.synthetic import make_phantom, write_dicom_series

    root = tmp_path_factory.mktemp("study") / "study"
    # Non-square pixels on purpose: the SDK's own affine would put this series ~1 cm off (see app.py).
    phantom = make_phantom((44, 40, 26), spacing=(0.78, 0.92, 2.5), seed=5)
    ct = write_dicom_series(phantom.image, phantom.affine, root / "ct", seed=5, series_number=1)
    scout = make_phantom((44, 40, 4), seed=6)
    write_dicom_series(
        scout.image, scout.affine, root / "scout", seed=5, series_number=2, series_description="scout"
    )
    write_dicom_series(phantom.image, phantom.affine, root / "mr", seed=5, series_number=3, modality="MR")
    return {"root": root, "ct": ct, "phantom": phantom}


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained liver bundle, exported to TorchScript (what Deploy loads)."""
    from medfcn.bundle.export import export_bundle

    dest = tmp_path_factory.mktemp("deploy-bundle") / "liver"
    shutil.copytree(trained_bundle, dest, ignore=shutil.ignore_patterns("eval", "logs", "runs", "mlruns"))
    export_bundle(dest)
    return dest


@pytest.fixture(scope="module")
def deploy_run(
    deploy_python: Path, bundle: Path, study: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    out = tmp_path_factory.mktemp("deploy-out")
    env = {
        **os.environ,
        "HOLOSCAN_INPUT_PATH": str(study["root"]),
        "HOLOSCAN_OUTPUT_PATH": str(out),
        "HOLOSCAN_MODEL_PATH": str(bundle / "models" / "model.ts"),
    }
    start = time.perf_counter()
    result = subprocess.run(
        [str(deploy_python), str(APP)], env=env, capture_output=True, text=True, timeout=600, cwd=out
    )
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    match = re.search(r"series processed in ([\d.]+) s", result.stdout)
    assert match, result.stdout[-2000:]
    print(f"\nDeploy app on CPU: {float(match.group(1)):.2f} s for the series, {wall:.1f} s with start-up")
    return {"out": out, "log": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def medfcn_run(bundle: Path, study: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medfcn.engine.inference import segment_folder

    out = tmp_path_factory.mktemp("medfcn-out")
    summary = segment_folder(
        bundle, study["root"], out, device="cpu", modality="CT", min_slices=16, previews=False, progress=False
    )
    assert summary.ok == 1 and summary.failed == 0, summary
    (case_dir,) = [p for p in out.iterdir() if p.is_dir() and (p / "mask.nii.gz").is_file()]
    return case_dir


def _labels_by_instance(seg_path: Path, source: list) -> np.ndarray:
    """(slices, rows, cols) label map of a DICOM SEG, in the order of the ``source`` datasets."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    return np.asarray(
        seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in source],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    )


def _source(paths: list[Path]) -> list:
    import pydicom

    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_seg_is_written_for_the_ct_volume_only(deploy_run: dict, study: dict, bundle: Path) -> None:
    import highdicom as hd

    from medfcn.bundle.export import load_torchscript_bundle

    segs = sorted(deploy_run["out"].glob("*.dcm"))
    assert len(segs) == 1
    seg = hd.seg.segread(segs[0])
    ct = _source(study["ct"])
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    assert {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence} == {ct[0].SeriesInstanceUID}
    assert referenced <= {ds.SOPInstanceUID for ds in ct}
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    # Segments: one per foreground label of the bundle's channel_def, coded.
    _, meta, _ = load_torchscript_bundle(bundle / "models" / "model.ts")
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == [channel_def[k] for k in sorted(channel_def, key=int) if int(k) > 0]
    types = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence}
    assert types.get("liver") == "Liver"
    assert "not for clinical use" in seg.SeriesDescription
    # No patient data in what the app names or logs by default.
    assert "SYNTHETIC" not in segs[0].name and ct[0].PatientID not in deploy_run["log"]
    assert ct[0].SeriesInstanceUID not in deploy_run["log"]


def test_deploy_seg_equals_medfcn_infer(deploy_run: dict, medfcn_run: Path, study: dict) -> None:
    ct = _source(study["ct"])
    (deploy_seg,) = deploy_run["out"].glob("*.dcm")
    deploy = _labels_by_instance(deploy_seg, ct)
    ours = _labels_by_instance(medfcn_run / "seg.dcm", ct)
    assert deploy.shape == (len(ct), int(ct[0].Rows), int(ct[0].Columns))
    assert np.count_nonzero(deploy == 1) > 0.02 * deploy.size  # the trained bundle finds the liver
    mismatch = int(np.count_nonzero(deploy != ours))
    assert mismatch == 0, f"{mismatch} of {deploy.size} voxels differ between Deploy and medfcn infer"


def test_deploy_seg_matches_the_nifti_mask_through_geometry(
    deploy_run: dict, medfcn_run: Path, study: dict
) -> None:
    """Independent of either SEG writer: each NIfTI voxel centre, mapped to its DICOM pixel, has its label."""
    import nibabel as nib

    ct = _source(study["ct"])
    (deploy_seg,) = deploy_run["out"].glob("*.dcm")
    labels = _labels_by_instance(deploy_seg, ct)  # (k, row, col)
    mask_img = nib.load(medfcn_run / "mask.nii.gz")
    mask = np.asarray(mask_img.dataobj)
    ijk = np.indices(mask.shape).reshape(3, -1)
    lps = np.diag([-1.0, -1.0, 1.0]) @ (mask_img.affine[:3, :3] @ ijk + mask_img.affine[:3, 3:4])
    iop = np.array(ct[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    between_rows, between_cols = (float(v) for v in ct[0].PixelSpacing)
    positions = np.array([np.array(ds.ImagePositionPatient, dtype=float) for ds in ct])
    heights = positions @ normal
    k = np.abs(heights[:, None] - (normal @ lps)[None, :]).argmin(axis=0)
    rel = lps - positions[k].T
    col = rel.T @ row_dir / between_cols
    row = rel.T @ col_dir / between_rows
    assert np.abs(heights[k] - normal @ lps).max() < 1e-3
    assert np.abs(col - np.rint(col)).max() < 1e-3 and np.abs(row - np.rint(row)).max() < 1e-3
    dicom_labels = labels[k, np.rint(row).astype(int), np.rint(col).astype(int)]
    assert np.array_equal(dicom_labels, mask.reshape(-1))


def test_deploy_nifti_matches_medfcn_nifti(deploy_run: dict, medfcn_run: Path) -> None:
    import nibabel as nib

    deploy = nib.as_closest_canonical(nib.load(deploy_run["out"] / "segmentation.nii.gz"))
    ours = nib.as_closest_canonical(nib.load(medfcn_run / "mask.nii.gz"))
    np.testing.assert_allclose(deploy.affine, ours.affine, atol=1e-3)
    assert np.array_equal(np.asarray(deploy.dataobj), np.asarray(ours.dataobj))
