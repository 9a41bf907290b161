"""Score a folder of predicted label maps with medfcn's own ``case_metrics`` (Dice, HD95 in mm per class).

Each ``PRED/<case>.nii.gz`` is compared with ``DATA/labelsTr/<case>.nii.gz``; spacing comes from the
label's affine. Prints a per-class table (mean ± sd over cases) and writes per-case and summary JSON.

Usage: python benchmarks/nnunet/score.py PRED_DIR --data ../shared/data/msd-hippocampus --out scores.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medfcn.engine.evaluation import case_metrics

CLASSES = {1: "anterior", 2: "posterior"}


def score(pred_dir: Path, data: Path) -> dict:
    cases = {}
    for pred_path in sorted(pred_dir.glob("*.nii.gz")):
        cid = pred_path.name.removesuffix(".nii.gz")
        lab = nib.load(data / "labelsTr" / f"{cid}.nii.gz")
        truth = np.rint(np.asarray(lab.dataobj)).astype(np.int64)
        pred = np.rint(np.asarray(nib.load(pred_path).dataobj)).astype(np.int64)
        spacing = np.sqrt((lab.affine[:3, :3] ** 2).sum(axis=0)).tolist()
        cases[cid] = {CLASSES[c]: {"dice": float(d), "hd95_mm": float(h)}
                      for c, d, h in case_metrics(pred, truth, spacing, num_classes=3)}
    summary = {}
    for name in CLASSES.values():
        for metric in ("dice", "hd95_mm"):
            vals = np.array([m[name][metric] for m in cases.values()], dtype=float)
            fin = vals[np.isfinite(vals)]  # medfcn's convention: mean ± sd over finite values, inf counted
            summary.setdefault(name, {})[metric] = {
                "mean": float(fin.mean()) if fin.size else None, "sd": float(fin.std()) if fin.size else None,
                "n": int(fin.size), "n_inf": int(vals.size - fin.size)}
    for m in cases.values():  # JSON has no inf: a structure missing from one side is written as null
        for c in m.values():
            c["hd95_mm"] = c["hd95_mm"] if np.isfinite(c["hd95_mm"]) else None
    return {"n_cases": len(cases), "summary": summary, "cases": cases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pred_dir", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/msd-hippocampus"))
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default PRED_DIR/medfcn_scores.json)")
    ap.add_argument("--result", type=Path, default=None, help="also write a summary (no per-case) here ...")
    ap.add_argument("--meta", type=Path, default=None, help="... merged with this JSON (timings, versions)")
    args = ap.parse_args()
    result = score(args.pred_dir, args.data)
    print(f"{result['n_cases']} cases   Dice mean ± sd      HD95 mm mean ± sd")
    for name, s in result["summary"].items():
        d, h = s["dice"], s["hd95_mm"]
        print(f"{name:<10} {d['mean']:.4f} ± {d['sd']:.4f}    {h['mean']:.2f} ± {h['sd']:.2f}"
              f" (n={h['n']}, inf={h['n_inf']})")
    out = args.out or args.pred_dir / "medfcn_scores.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.result:
        meta = json.loads(args.meta.read_text()) if args.meta else {}
        summary = result["summary"]
        args.result.write_text(json.dumps({**meta, "n_cases": result["n_cases"], "metrics": summary,
                                           "scored_with": "medfcn.engine.evaluation.case_metrics"}, indent=2) + "\n")
        print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
