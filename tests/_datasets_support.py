"""Tiny datasets in other tools' layouts for the dataset-format tests (imported by name, like _liver_support)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medfcn.data.synthetic import make_phantom


def write_nnunet_raw(root: Path, *, cases: int = 3, channels: int = 2, shape: tuple[int, int, int] = (30, 28, 12),
                     test: int = 1, seed: int = 0, binary: bool = False) -> Path:
    """A tiny nnU-Net v2 raw dataset of phantoms: channel c is the CT scaled by 1/(c+1); ``binary``: one
    foreground class (liver and tumour together)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases + test):
        ph = make_phantom(shape, seed=seed + i, noise_hu=5.0)
        folder = "imagesTr" if i < cases else "imagesTs"
        for c in range(channels):
            img = nib.Nifti1Image((ph.image / (c + 1)).astype(np.float32), ph.affine)
            nib.save(img, str(root / folder / f"case_{i:03d}_{c:04d}.nii.gz"))
        if i < cases:
            label = (ph.label > 0) if binary else ph.label
            nib.save(nib.Nifti1Image(label.astype(np.uint8), ph.affine), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"CT{c}" for c in range(channels)},
        "labels": {"background": 0, "organ": 1} if binary else {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "Dataset501_Phantom",
    }))
    return root


def write_msd(root: Path, *, cases: int = 2, shape: tuple[int, int, int] = (30, 28, 12), seed: int = 20,
              binary: bool = False) -> Path:
    """A tiny MSD-layout dataset (dataset.json with a training list) of phantoms."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(cases):
        ph = make_phantom(shape, seed=seed + i, noise_hu=5.0)
        label = (ph.label > 0) if binary else ph.label
        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(root / "imagesTr" / f"ph_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), ph.affine), str(root / "labelsTr" / f"ph_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/ph_{i}.nii.gz", "label": f"./labelsTr/ph_{i}.nii.gz"})
    labels = {"0": "background", "1": "organ"} if binary else {"0": "background", "1": "liver", "2": "tumour"}
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "modality": {"0": "CT"}, "labels": labels,
                                                   "numTraining": cases, "training": training, "test": []}))
    return root
