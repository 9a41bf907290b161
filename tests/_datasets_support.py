"""Tiny datasets in other tools' layouts for the dataset-format tests (imported by name, like _liver_support)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medfcn.data.synthetic import make_phantom


def write_nnunet_raw(root: Path, *, cases: int = 3, channels: int = 2, shape: tuple[int, int, int] = (30, 28, 12),
                     test: int = 1, seed: int = 0) -> Path:
    """A tiny nnU-Net v2 raw dataset of phantoms: channel c is the CT scaled by 1/(c+1)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases + test):
        ph = make_phantom(shape, seed=seed + i, noise_hu=5.0)
        folder = "imagesTr" if i < cases else "imagesTs"
        for c in range(channels):
            img = nib.Nifti1Image((ph.image / (c + 1)).astype(np.float32), ph.affine)
            nib.save(img, str(root / folder / f"case_{i:03d}_{c:04d}.nii.gz"))
        if i < cases:
            nib.save(nib.Nifti1Image(ph.label.astype(np.uint8), ph.affine), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"CT{c}" for c in range(channels)},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "Dataset501_Phantom",
    }))
    return root
