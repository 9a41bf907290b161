"""A corpus of hostile input, built in a temp folder: what a real export folder can throw at medfcn.

Each entry is one top-level name under the corpus root (a file or a folder) and says what a correct
pipeline may do with it: ``"ok"`` (valid input: must be segmented), ``"reject"`` (must be reported as
failed/skipped with a reason matching ``reason``), or ``"either"`` (a defensible judgement call: segmented,
or reported with a reason).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

__all__ = ["SHAPE", "Entry", "build_corpus", "build_hostile_msd", "is_root", "tree_digest"]

SHAPE = (24, 24, 12)


@dataclass(frozen=True)
class Entry:
    """One hostile input: ``name`` under the corpus root, the expected outcome and the reason pattern."""

    name: str
    expect: Literal["ok", "reject", "either"]
    reason: str = ""  # regex (case-insensitive) the reason must match when rejected


def is_root() -> bool:
    """Root reads files whatever their permission bits: chmod-000 tests must know."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file (symlinks recorded by target, never followed), plus folders and modes."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"dir:{oct(p.stat().st_mode)}"
            else:
                mode = p.stat().st_mode
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    digest = "unreadable"
                out[rel] = f"{oct(mode)}:{digest}"
    return out


def _phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from medfcn.data.synthetic import make_phantom

    ph = make_phantom(SHAPE, spacing=(1.5, 1.5, 3.0), seed=seed, orientation="lps")
    return np.asarray(ph.image, dtype=np.float32), np.asarray(ph.affine, dtype=np.float64)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype: type = np.int16) -> Path:
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    nib.save(img, path)
    return path


def _series(folder: Path, seed: int, **kwargs: object) -> list[Path]:
    from medfcn.data.synthetic import write_dicom_series

    image, affine = _phantom(seed)
    return write_dicom_series(image, affine, folder, seed=seed, **kwargs)  # type: ignore[arg-type]


def build_corpus(root: Path) -> list[Entry]:
    """Write the hostile corpus under ``root`` (created) and return its entries."""
    import pydicom

    root.mkdir(parents=True, exist_ok=True)
    image, affine = _phantom(1)
    entries: list[Entry] = []

    # Valid input with awkward names: must simply work.
    _nifti(root / "scan with spaces ü.nii.gz", image, affine)
    entries.append(Entry("scan with spaces ü.nii.gz", "ok"))
    _series(root / "série dicom ä", seed=2)
    entries.append(Entry("série dicom ä", "ok"))

    # Truncated files.
    good = _nifti(root / "_tmp_good.nii.gz", image, affine)
    data = good.read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    good.unlink()
    entries.append(Entry("truncated.nii.gz", "reject", r"truncat|corrupt|read|gzip|EOF|compressed|end of"))
    files = _series(root / "truncated_dicom", seed=3)
    for f in files:
        raw = f.read_bytes()
        f.write_bytes(raw[: len(raw) // 3])  # header survives, pixel data is cut
    entries.append(
        Entry("truncated_dicom", "reject", r"truncat|corrupt|pixel|read|short|incomplete|size|buffer")
    )

    # NIfTI scale factors: 0 and NaN mean "no scaling" in the NIfTI-1 standard, so these are valid scans.
    for name, slope in (("zero_slope.nii", 0.0), ("nan_slope.nii", float("nan"))):
        img = nib.Nifti1Image(image.astype(np.int16), affine)
        img.header["scl_slope"] = slope
        img.header["scl_inter"] = 0.0
        nib.save(img, root / name)
        # nibabel "helpfully" resets the slope on save; write the declared value into the header bytes.
        raw = bytearray((root / name).read_bytes())
        raw[112:116] = np.float32(slope).tobytes()
        (root / name).write_bytes(bytes(raw))
        entries.append(Entry(name, "ok"))

    # Non-finite voxels.
    bad = image.copy()
    bad[0, 0, :] = np.nan
    bad[1, 1, :] = np.inf
    bad[2, 2, :] = -np.inf
    _nifti(root / "nonfinite.nii.gz", bad, affine, np.float32)
    entries.append(Entry("nonfinite.nii.gz", "either", r"finite|nan|inf"))

    # Degenerate geometry and dimensionality.
    _nifti(root / "one_slice.nii.gz", image[:, :, :1], affine)
    entries.append(Entry("one_slice.nii.gz", "either", r"slice|thin|small|shape|size|dimension|3D|voxel"))
    _nifti(root / "four_d.nii.gz", np.stack([image] * 3, axis=-1), affine)
    entries.append(Entry("four_d.nii.gz", "reject", r"channel|4D|phase|dimension|shape"))
    _nifti(root / "uint8.nii.gz", np.clip(image + 1024, 0, 255), affine, np.uint8)
    entries.append(Entry("uint8.nii.gz", "either", r"uint8|type|dtype|range|intensit|HU"))

    # Huge declared dimensions with tiny data: must be refused without trying to allocate ~4 TB.
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), affine)
    nib.save(img, root / "huge_dims.nii")
    raw = bytearray((root / "huge_dims.nii").read_bytes())
    raw[40:56] = np.array([3, 20000, 20000, 5000, 1, 1, 1, 1], dtype="<i2").tobytes()
    (root / "huge_dims.nii").write_bytes(bytes(raw))
    entries.append(
        Entry(
            "huge_dims.nii", "reject", r"truncat|declare|size|short|bytes|expected|too large|voxels"
        )  # not just "MemoryError"
    )

    # DICOM variants.
    files = _series(root / "rgb_dicom", seed=4)
    for f in files:
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.astype(np.uint8)
        ds.PixelData = np.repeat(px[..., None], 3, axis=-1).tobytes()
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.save_as(f)
    entries.append(
        Entry("rgb_dicom", "reject", r"RGB|colou?r|samples|photometric|channel|grayscale|monochrome")
    )

    files = _series(root / "no_position_dicom", seed=5)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    entries.append(Entry("no_position_dicom", "reject", r"ImagePositionPatient|position|geometry"))

    files = _series(root / "duplicate_dicom", seed=6)
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(files[3].with_name("IM_dup.dcm"))  # same position as slice 4, different instance
    entries.append(Entry("duplicate_dicom", "either", r"duplicat|position|spacing|overlap"))

    files = _series(root / "mixed_orientation_dicom", seed=7)
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # a sagittal slice in an axial series
    ds.save_as(files[5])
    entries.append(
        Entry("mixed_orientation_dicom", "reject", r"orientation|ImageOrientationPatient|geometry")
    )

    # A symlink loop in the tree: discovery must not walk it forever.
    (root / "loop").mkdir()
    os.symlink("..", root / "loop" / "back_to_root")
    os.symlink("loop_b", root / "loop" / "loop_a")
    os.symlink("loop_a", root / "loop" / "loop_b")
    entries.append(Entry("loop", "either", r"link|loop|cycle|not|resolv"))

    # Unreadable permissions (root still reads it: then it is just a valid scan).
    locked = _nifti(root / "locked.nii.gz", image, affine)
    locked.chmod(0o000)
    entries.append(
        Entry("locked.nii.gz", "ok" if is_root() else "reject", r"permission|denied|readable|access")
    )
    return entries


def build_hostile_msd(root: Path) -> dict[str, str]:
    """An MSD dataset whose cases are hostile; returns ``{image file name: reason regex}`` of the bad ones."""
    import json

    image, affine = _phantom(8)
    label = (image > 0).astype(np.uint8)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    bad: dict[str, str] = {}
    names = ["good", "truncated", "four_d_label", "huge_dims", "shape_mismatch", "nonfinite"]
    for n in names:
        _nifti(root / "imagesTr" / f"{n}.nii.gz", image, affine)
        _nifti(root / "labelsTr" / f"{n}.nii.gz", label, affine, np.uint8)
    raw = (root / "imagesTr" / "truncated.nii.gz").read_bytes()
    (root / "imagesTr" / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    bad["truncated"] = r"truncat|corrupt|read|gzip|EOF|load|end of"
    _nifti(root / "labelsTr" / "four_d_label.nii.gz", np.stack([label] * 2, -1), affine, np.uint8)
    bad["four_d_label"] = r"3D|4D|dimension|shape|label"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), affine)
    nib.save(img, root / "imagesTr" / "huge_dims.nii.gz")
    with gzip.open(root / "imagesTr" / "huge_dims.nii.gz", "rb") as fh:
        hdr = bytearray(fh.read())
    hdr[40:56] = np.array([3, 20000, 20000, 5000, 1, 1, 1, 1], dtype="<i2").tobytes()
    with gzip.open(root / "imagesTr" / "huge_dims.nii.gz", "wb") as fh:
        fh.write(bytes(hdr))
    bad["huge_dims"] = r"truncat|size|large|short|bytes|dimension|read|memory|data|load|shape"
    _nifti(root / "labelsTr" / "shape_mismatch.nii.gz", label[:, :, :-2], affine, np.uint8)
    bad["shape_mismatch"] = r"shape|size|match"
    noisy = image.copy()
    noisy[0, 0, 0] = np.nan
    _nifti(root / "imagesTr" / "nonfinite.nii.gz", noisy, affine, np.float32)
    bad["nonfinite"] = r"finite|nan"  # a NaN voxel poisons every loss it touches: the check must say so
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]
    meta = {
        "name": "hostile",
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "modality": {"0": "CT"},
        "numTraining": len(names),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return bad
