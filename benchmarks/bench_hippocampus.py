"""Hippocampus on real MR: cross-validation folds of the shipped FCN recipe, and MONAI's UNet at equal wall time.

Each method trains one fold of medfcn's deterministic 5-fold split of the 200 MSD Task04 cases in
``../shared/data/msd-hippocampus`` with ``medfcn train --fold K --time-budget MIN`` (the epochs and the
learning-rate schedule are planned from the measured epoch time to end within the budget, so both methods get
the same wall time on the same machine), then is scored by ``medfcn evaluate --fold K`` (the bundle's own
inference pipeline, Dice and HD95 per class on each scan's grid, on the 40 cases of fold K it never saw).

* ``fcn``: ``bundles/hippocampus`` as it is.
* ``unet``: a copy of it whose ``network_def`` is MONAI's ``UNet`` (channels 16, 32, 64, 128, strides 2, two
  residual units, instance norm); the rest of the recipe (preprocessing, patches, augmentation, loss, optimiser,
  bf16 autocast, budget) is the bundle's.

Results go to ``benchmarks/results/hippocampus/<method>/fold_K.json`` (and ``cv.json``): folds run at other
times add up there. nnU-Net v2 on the same fold is measured by ``benchmarks/nnunet/`` and read from
``benchmarks/results/nnunet_fold0.json`` when present.

Usage:
    python benchmarks/bench_hippocampus.py --method fcn --fold 0 --minutes 14
    python benchmarks/bench_hippocampus.py --method unet --fold 0 --minutes 14
    python benchmarks/bench_hippocampus.py --table            # print what benchmarks/results holds
    python benchmarks/bench_hippocampus.py --infer 60         # `medfcn infer` of 60 cases, start-up included
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"
DATA = REPO.parent / "shared" / "data" / "msd-hippocampus"
RESULTS = REPO / "benchmarks" / "results" / "hippocampus"
UNET_DEF: dict[str, Any] = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": "@num_classes",
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 2,
    "norm": "instance",
}


def _bundle_for(method: str, work: Path) -> Path:
    """The bundle a method trains: the shipped one, or a copy with MONAI's UNet as its network."""
    from medfcn.bundle import copy_bundle

    if method == "fcn":
        return BUNDLE
    dest = work / f"hippocampus-{method}"
    if not dest.exists():
        copy_bundle(BUNDLE, dest)
        infer = dest / "configs" / "inference.json"
        config = json.loads(infer.read_text(encoding="utf-8"))
        config["network_def"] = UNET_DEF
        infer.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return dest


def run(method: str, fold: int, minutes: float, work: Path, data: Path) -> dict[str, Any]:
    """Train ``method`` on ``fold`` within ``minutes`` and score it; returns the fold summary."""
    from medfcn.engine.crossval import evaluate_folds
    from medfcn.engine.training import train

    bundle = _bundle_for(method, work)
    out = work / method / f"fold_{fold}"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    train(
        bundle,
        data_dir=data,
        fold=fold,
        output_dir=out,
        amp=True,
        device="cpu",
        time_budget=minutes * 60.0,
        tracking=False,
        quiet=True,
    )
    wall = time.perf_counter() - t0
    results = RESULTS / method
    evaluate_folds(bundle, data, folds=[fold], runs=work / method, results=results, device="cpu", progress=False)
    summary = json.loads((results / f"fold_{fold}.json").read_text(encoding="utf-8"))
    summary.update(
        {
            "method": method,
            "budget_minutes": minutes,
            "wall_seconds_with_setup": round(wall, 1),
            "cpu": _cpu(),
            "load_average": os.getloadavg(),
        }
    )
    (results / f"fold_{fold}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in text]
    return f"{name} ({', '.join(flags) or 'no bf16 units'}), {os.cpu_count()} cores"


def table() -> str:
    """Markdown rows for every method and fold in benchmarks/results."""
    rows = ["| method | fold | epochs | train s | anterior Dice | posterior Dice | anterior HD95 mm | posterior HD95 mm |",
            "|---|---|---|---|---|---|---|---|"]
    for method_dir in sorted(p for p in RESULTS.glob("*") if p.is_dir()):
        for path in sorted(method_dir.glob("fold_*.json")):
            s = json.loads(path.read_text(encoding="utf-8"))
            a, p = s["classes"]["anterior"], s["classes"]["posterior"]
            rows.append(
                f"| {method_dir.name} | {s['fold']} | {s.get('train_epochs')} | {s.get('train_seconds')} | "
                f"{a['dice_mean']:.4f} | {p['dice_mean']:.4f} | {a['hd95_mm_mean']:.2f} | {p['hd95_mm_mean']:.2f} |"
            )
        cv = method_dir / "cv.json"
        if cv.is_file() and len(list(method_dir.glob("fold_*.json"))) > 1:
            c = json.loads(cv.read_text(encoding="utf-8"))
            m = c["mean_over_folds"]
            rows.append(
                f"| **{method_dir.name}, mean of {len(c['folds_scored'])} folds** | {','.join(map(str, c['folds_scored']))} "
                f"| | | **{m['anterior']['dice']:.4f}** | **{m['posterior']['dice']:.4f}** | "
                f"{m['anterior']['hd95_mm']:.2f} | {m['posterior']['hd95_mm']:.2f} |"
            )
    nnunet = RESULTS.parent / "nnunet_fold0.json"
    n = json.loads(nnunet.read_text(encoding="utf-8")) if nnunet.is_file() else None
    if n and n.get("metrics"):
        m = n["metrics"]
        rows.append(
            f"| nnU-Net v2 3d_fullres ({n['trainer']}) | {n['fold']} | 1 | {n.get('epoch_wall_s')} | "
            f"{m['anterior']['dice']['mean']:.4f} | {m['posterior']['dice']['mean']:.4f} | "
            f"{m['anterior']['hd95_mm']['mean']:.2f} | {m['posterior']['hd95_mm']['mean']:.2f} |"
        )
    return "\n".join(rows)


def time_infer(n: int, data: Path) -> dict[str, Any]:
    """Wall time of one ``medfcn infer`` process (start-up included) on ``n`` real cases, fp32, CPU."""
    import subprocess
    import tempfile

    images = sorted((data / "imagesTr").glob("*.nii.gz"))[:n]
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans"
        scans.mkdir()
        for image in images:
            shutil.copy(image, scans / image.name)
        cmd = ["medfcn", "infer", "--bundle", str(BUNDLE), "--input", str(scans), "--output", f"{tmp}/out",
               "--device", "cpu", "-q"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"medfcn infer failed ({proc.returncode}): {proc.stderr[-2000:]}")
        done = len(list(Path(tmp, "out").glob("*/mask.nii.gz")))
    return {"cases": len(images), "masks": done, "wall_s": round(wall, 2), "s_per_case": round(wall / max(len(images), 1), 3),
            "cpu": _cpu(), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("fcn", "unet"), default="fcn")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=14.0, help="training budget per fold (default 14)")
    parser.add_argument("--work", type=Path, default=Path("runs") / "bench_hippocampus", help="run folders")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--table", action="store_true", help="only print the results table")
    parser.add_argument("--infer", type=int, metavar="N", help="only time `medfcn infer` of N cases")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if not (args.data / "dataset.json").is_file():
        print(f"error: no MSD Hippocampus dataset at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if args.infer:
        print(json.dumps(time_infer(args.infer, args.data.resolve()), indent=2))
        return 0
    summary = run(args.method, args.fold, args.minutes, args.work.resolve(), args.data.resolve())
    print(json.dumps({k: summary[k] for k in ("method", "fold", "train_epochs", "train_seconds", "classes")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
