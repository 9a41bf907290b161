"""Patient data stays private: marker strings planted in the inputs' patient module must surface nowhere
(output file names, log lines, summaries, run.json, stats, previews, MLflow params/tags/artifacts) except in
the DICOM SEG, which must carry the source's patient module as the standard requires."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from _corpus import tree_digest  # type: ignore[import-not-found]

NAME = "ZZMARKNAME^QXVPATIENT"
PID = "ZZMARKID8841"
BIRTH = "19010203"
MARKERS = ("ZZMARKNAME", "QXVPATIENT", PID, BIRTH)


def _hits(blob: bytes | str) -> list[str]:
    text = blob if isinstance(blob, str) else blob.decode("latin-1")
    return [m for m in MARKERS if m.lower() in text.lower()]


def _scan_tree(root: Path, *, allow: tuple[str, ...] = ()) -> list[str]:
    """Marker hits in any file name or file content under ``root`` (gzip content decompressed)."""
    import gzip

    found = []
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if _hits(rel):
            found.append(f"name: {rel}")
        if not p.is_file() or p.name in allow:
            continue
        data = p.read_bytes()
        if p.suffix == ".gz":
            with contextlib.suppress(OSError):
                data = gzip.decompress(data)
        hits = _hits(data)
        if hits:
            found.append(f"content of {rel}: {hits}")
    return found


def _marked_series(folder: Path) -> list[Path]:
    import pydicom

    from medfcn.data.synthetic import make_phantom, write_dicom_series

    ph = make_phantom((24, 24, 12), spacing=(1.5, 1.5, 3.0), seed=11, orientation="lps")
    files = write_dicom_series(np.asarray(ph.image), np.asarray(ph.affine), folder, seed=11)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PatientName = NAME
        ds.PatientID = PID
        ds.PatientBirthDate = BIRTH
        ds.save_as(f)
    return files


def test_infer_never_leaks_patient_identifiers(trained_bundle: Path, tmp_path: Path) -> None:
    import pydicom

    scans = tmp_path / "scans"
    files = _marked_series(scans / "study1")
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    before = tree_digest(scans)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medfcn",
            "infer",
            "--bundle",
            str(trained_bundle),
            "--input",
            str(scans),
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(scans) == before
    assert not _hits(proc.stdout + proc.stderr), "a marker reached the console/log output"
    assert series_uid not in proc.stdout + proc.stderr, "the SeriesInstanceUID was logged"
    # SEG and RTSTRUCT are DICOM objects of the same patient: they must carry the patient module
    leaks = _scan_tree(out, allow=("seg.dcm", "rtstruct.dcm"))
    assert not leaks, leaks
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    assert not [n for n in names if series_uid in n], "the SeriesInstanceUID is in a file name"
    # The DICOM SEG is the one place the patient module must be: copied from the source series.
    [seg_file] = list(out.rglob("seg.dcm"))
    seg = pydicom.dcmread(seg_file)
    assert str(seg.PatientName) == NAME and seg.PatientID == PID and seg.PatientBirthDate == BIRTH


def test_training_with_mlflow_never_leaks_header_identifiers(trained_bundle: Path, tmp_path: Path) -> None:
    """Converters (dcm2niix -d, old tools) put patient names in NIfTI ``descrip``/``aux_file``; a tiny
    training with MLflow tracking must not copy them into params, tags, metrics, artifacts or logs."""
    import shutil

    from medfcn.data.synthetic import write_msd_dataset
    from medfcn.engine import training  # a plain import: a broken medfcn module fails here, never skips

    data = write_msd_dataset(tmp_path / "Task03_Liver", num_train=3, num_test=0, shape=(32, 32, 16), seed=1)
    for p in [*data.glob("imagesTr/*.nii.gz"), *data.glob("labelsTr/*.nii.gz")]:
        img = nib.load(p)
        hdr = img.header.copy()
        hdr["descrip"] = f"{NAME} {PID}".encode()
        hdr["aux_file"] = BIRTH.encode()
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, hdr), p)
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle, bundle, ignore=shutil.ignore_patterns("eval", "logs", "runs", "mlruns"))
    store = tmp_path / "mlflow"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    log_file = tmp_path / "train.log"
    import logging

    handler = logging.FileHandler(log_file, encoding="utf-8")
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        training.train(
            bundle,
            data_dir=data,
            epochs=1,
            device="cpu",
            output_dir=tmp_path / "train_out",
            tracking_uri=uri,
            experiment="privacy",
            quiet=True,
        )
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert not _hits(log_file.read_text(encoding="utf-8", errors="replace"))
    con = sqlite3.connect(store / "mlflow.db")
    try:
        for table in ("params", "tags", "metrics", "runs", "experiments", "experiment_tags"):
            rows = con.execute(f"SELECT * FROM {table}").fetchall()
            assert not _hits(json.dumps(rows, default=str)), f"marker in MLflow table {table}"
        n_params = con.execute("SELECT COUNT(*) FROM params").fetchone()[0]
        assert n_params > 0, "the run logged no params: tracking did not happen, so this test proves nothing"
    finally:
        con.close()
    for folder in (tmp_path / "train_out", store, bundle):
        if folder.exists():
            assert not _scan_tree(folder), _scan_tree(folder)
