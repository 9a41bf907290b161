"""Build nnU-Net v2's raw Dataset004_Hippocampus from the shared MSD folder, with medfcn's 5-fold split.

Images are symlinked (as ``*_0000.nii.gz``); labels are symlinked too, except float32 ones, which are
written as uint8 copies (nnU-Net wants integer labels). ``splits_final.json`` holds medfcn's folds
(``split_datalist(items, seed=0, fold=k, num_folds=5)``) and is written to the preprocessed folder.

Usage: python benchmarks/nnunet/make_raw.py --data ../shared/data/msd-hippocampus --root /work/nnunet
       python benchmarks/nnunet/make_raw.py --root /work/nnunet --splits-only   (after plan_and_preprocess)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medfcn.data.msd import load_datalist, split_datalist

NAME = "Dataset004_Hippocampus"


def case_id(path: str) -> str:
    return Path(path).name.removesuffix(".nii.gz")


def medfcn_splits(data: Path, num_folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    items = load_datalist(str(data))["training"]
    splits = []
    for fold in range(num_folds):
        train, val = split_datalist(items, seed=seed, fold=fold, num_folds=num_folds)
        splits.append({"train": sorted(case_id(i["label"]) for i in train),
                       "val": sorted(case_id(i["label"]) for i in val)})
    return splits


def build_raw(data: Path, raw: Path) -> int:
    out = raw / NAME
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    items = load_datalist(str(data))["training"]
    for item in items:
        cid = case_id(item["label"])
        img = out / "imagesTr" / f"{cid}_0000.nii.gz"
        lab = out / "labelsTr" / f"{cid}.nii.gz"
        for p in (img, lab):
            if p.is_symlink() or p.exists():
                p.unlink()
        img.symlink_to(Path(item["image"]).resolve())
        src = nib.load(item["label"])
        if np.issubdtype(src.get_data_dtype(), np.integer):
            lab.symlink_to(Path(item["label"]).resolve())
        else:  # float32 labels with integral values: write a uint8 copy here, never in the shared folder
            arr = np.asarray(src.dataobj)
            assert np.array_equal(arr, np.round(arr)), cid
            copy = nib.Nifti1Image(arr.astype(np.uint8), src.affine, src.header)
            copy.set_data_dtype(np.uint8)
            nib.save(copy, lab)
            print(f"{cid}: float label written as uint8")
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": len(items), "file_ending": ".nii.gz", "name": "Hippocampus"}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/msd-hippocampus"))
    ap.add_argument("--root", type=Path, default=Path("/work/nnunet"), help="holds nnUNet_raw, nnUNet_preprocessed")
    ap.add_argument("--splits-only", action="store_true", help="only write splits_final.json")
    args = ap.parse_args()
    if not args.splits_only:
        n = build_raw(args.data, args.root / "nnUNet_raw")
        print(f"raw dataset: {n} cases in {args.root / 'nnUNet_raw' / NAME}")
    splits = medfcn_splits(args.data)
    pre = args.root / "nnUNet_preprocessed" / NAME
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "splits_final.json").write_text(json.dumps(splits, indent=2))
    print(f"splits_final.json: {[len(s['val']) for s in splits]} val cases per fold -> {pre}")


if __name__ == "__main__":
    main()
