"""Start-up: ``medfcn --help`` loads neither PyTorch nor MONAI, ``medfcn info`` not MONAI, importing the
inference modules loads no framework, and a one-case ``medfcn infer`` imports only what inference needs
(import checks in a fresh interpreter; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import json, os, sys
sys.argv = ["medfcn", *sys.argv[1:]]
from medfcn.cli.main import app
try:
    app()
except SystemExit:
    pass
heavy = json.loads(os.environ["PROBE_NAMES"])
print(json.dumps({name: name in sys.modules for name in heavy}))
"""
_HEAVY = ("torch", "monai", "numpy", "mlflow", "pydicom", "highdicom", "SimpleITK", "nibabel")


def _loaded(*args: str, names: tuple[str, ...] = _HEAVY) -> dict[str, bool]:
    env = {**os.environ, "PROBE_NAMES": json.dumps(names)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("infer", "--help"), ("train", "--help"), ("--version",)])
def test_help_imports_neither_torch_nor_monai(args: tuple[str, ...]) -> None:
    loaded = _loaded(*args)
    assert not any(loaded.values()), loaded


def test_info_imports_torch_but_not_monai() -> None:
    loaded = _loaded("info")
    assert loaded["torch"] and not loaded["monai"], loaded


def test_importing_inference_loads_no_framework() -> None:
    """``medfcn.engine.inference`` (and ``medfcn.Segmenter``) import PyTorch and MONAI only when a model is built."""
    code = (
        "import json, sys\n"
        "import medfcn.engine.inference, medfcn.engine.segmenter, medfcn.outputs, medfcn.bundle\n"
        "heavy = ('torch', 'monai', 'mlflow', 'pydicom', 'highdicom', 'SimpleITK', 'nibabel', 'scipy')\n"
        "print(json.dumps({name: name in sys.modules for name in heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any(loaded.values()), loaded


_UNNEEDED = (
    "mlflow", "monai.handlers", "monai.engines", "monai.apps.auto3dseg", "ignite", "pandas", "matplotlib", "scipy.signal",
)


def test_one_case_infer_imports_only_what_inference_needs(tmp_path: Path) -> None:
    """A fresh ``medfcn infer`` skips MONAI's package face and its unused optional imports, and still works."""
    import nibabel as nib
    import numpy as np

    scan = tmp_path / "scan.nii.gz"
    data = np.random.default_rng(0).normal(100.0, 30.0, (21, 25, 17)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(scan))
    out = tmp_path / "out"
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "hippocampus"
    loaded = _loaded(
        "infer", "--bundle", str(bundle), "--input", str(scan), "--output", str(out), "--device", "cpu", "-q",
        names=_UNNEEDED,
    )
    assert (out / "scan" / "done.json").is_file() and (out / "scan" / "mask.nii.gz").is_file()
    assert json.loads((out / "run.json").read_text())["versions"]["monai"]
    assert not any(loaded.values()), loaded


def test_infer_through_the_full_monai_face_writes_the_same_mask(tmp_path: Path) -> None:
    """``MEDFCN_FULL_MONAI=1`` turns the part-by-part import off; the mask is the same voxel for voxel."""
    import nibabel as nib
    import numpy as np

    scan = tmp_path / "scan.nii.gz"
    data = np.random.default_rng(1).normal(100.0, 30.0, (21, 25, 17)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(scan))
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "hippocampus"
    masks = {}
    for full in ("0", "1"):
        out = tmp_path / f"out{full}"
        env = {**os.environ, "MEDFCN_FULL_MONAI": full, "PROBE_NAMES": json.dumps(["monai.handlers"])}
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, "infer", "--bundle", str(bundle), "--input", str(scan), "--output",
             str(out), "--device", "cpu", "-q"],
            capture_output=True, text=True, timeout=600, check=False, env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        face_loaded = json.loads(proc.stdout.strip().splitlines()[-1])["monai.handlers"]
        assert face_loaded == (full == "1")  # the face imports every part, handlers included
        masks[full] = np.asarray(nib.load(out / "scan" / "mask.nii.gz").dataobj)
    np.testing.assert_array_equal(masks["0"], masks["1"])


def test_infer_reads_the_first_scan_before_importing_torch_and_freezes_the_collector_at_exit(tmp_path: Path) -> None:
    """``medfcn infer`` discovers and starts inflating its first ``.nii.gz`` before PyTorch is imported (the
    start-up and the first read overlap); the console script freezes the garbage collector when the
    command ends (the interpreter's last collection over PyTorch's and MONAI's objects is skipped)."""
    import nibabel as nib
    import numpy as np

    (tmp_path / "scans").mkdir()
    scan = tmp_path / "scans" / "scan.nii.gz"
    data = np.random.default_rng(2).normal(100.0, 30.0, (21, 25, 17)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(scan))
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "hippocampus"
    probe = """
import gc, json, sys
import medfcn.engine.inference as inference
seen = {}
real_ahead = inference.read_ahead
def read_ahead(*a, **k):
    case = real_ahead(*a, **k)
    if "read_ahead" not in seen:  # the command's own call (segment_folder's finds it started)
        seen["torch_at_read_ahead"] = "torch" in sys.modules
        seen["read_ahead"] = None if case is None else case.id
    return case
inference.read_ahead = read_ahead
sys.argv = ["medfcn", *sys.argv[1:]]
from medfcn.cli.main import main
try:
    main()
except SystemExit as exc:
    seen["code"] = exc.code
seen["frozen"] = gc.get_freeze_count()
print(json.dumps(seen))
"""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", probe, "infer", "--bundle", str(bundle), "--input", str(tmp_path / "scans"),
         "--output", str(out), "--device", "cpu", "-q"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["code"] in (0, None) and (out / "scan" / "done.json").is_file()
    assert seen["read_ahead"] == "scan" and seen["torch_at_read_ahead"] is False
    assert seen["frozen"] > 10_000  # PyTorch's and MONAI's objects, left to the process's end
