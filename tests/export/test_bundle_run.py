"""The exported bundle runs with MONAI's own runner: ``python -m monai.bundle run`` segments a NIfTI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.mark.slow
def test_monai_bundle_run_segments_a_nifti(exported_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medfcn.data.synthetic import make_phantom

    bundle, _ = exported_bundle
    phantom = make_phantom((37, 41, 23), seed=7, max_oblique_deg=12.0)
    scan = tmp_path / "in" / "case_07.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(phantom.image.astype(np.float32), phantom.affine), scan)
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()}
    # MONAI's bundle properties: `dataset#data` (dataset_data), `output_dir`, `bundle_root`, `device`.
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "configs/inference.json",
        "--meta_file", "configs/metadata.json",
        "--bundle_root", str(bundle),
        "--output_dir", str(out),
        "--dataset#data", f"[{{'image': '{scan}'}}]",
        "--device", "$torch.device('cpu')",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    written = sorted(out.rglob("*.nii*"))
    assert len(written) == 1, written
    mask = nib.load(written[0])
    data = np.asarray(mask.dataobj).squeeze()
    assert data.shape == phantom.image.shape
    np.testing.assert_allclose(mask.affine, phantom.affine, atol=1e-4)
    assert set(np.unique(data)) <= {0, 1, 2}
    assert {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()} == before  # bundle untouched
