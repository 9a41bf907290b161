"""Sliding-window inference speed and memory: medfcn FCN versus MONAI UNet, fp32 versus bf16 on the CPU.

Each configuration runs in its own child process so that its peak resident memory (``VmHWM`` from
``/proc/self/status``, which counts torch's allocations, unlike tracemalloc) is its own. Within a child
the timed call is repeated (after one warm-up) and the median is reported; ratios in the table are
computed from medians of the same run, on the same machine state.

Modes:
    ``net``: the preprocessed volume already in memory; times the bundle's ``SlidingWindowInferer``
        only (preprocessing excluded). The volume has the shape the bundle's preprocessing gives the
        synthetic CT, so both modes do the same network work.
    ``pipeline``: the bundle's whole inference pipeline from a NIfTI file (load, orient, resample,
        window, sliding window, softmax, inversion to the source grid, argmax) via
        :class:`medfcn.engine.inference.Segmenter` (preprocessing included, no output files).
    ``--infer-cli``: a whole ``medfcn infer`` of one case (outputs written), time and peak memory.

Both networks use the bundle's roi (``patch_size``), overlap, sw_batch_size and gaussian blending; the
UNet is MONAI's ``UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)`` with untrained
weights (speed does not depend on weight values).

A bundle without weights (``bundles/liver`` before ``medfcn train``) is benchmarked through a temporary copy
with seeded random weights, so the default command needs nothing but this checkout. The last table checks
the targets of issue 7 against the figures of the same run: FCN >= 1.5x faster than the UNet and bf16 >= 2x
faster than fp32 (network, preprocessing excluded), a whole ``medfcn infer`` of 512x512x300 in < 60 s and
< 6 GiB.

``--stages`` (on by default; issue 15): every step of one ``--infer-cli-size`` CT (and of the real
``example_ct``) through the liver bundle as shipped and through the MONAI reference pipeline (the same configs
with medfcn's fast transforms mapped back to MONAI's, ``REFERENCE_TARGETS``), each timed alone with its share
of the case; the voxels and per-class Dice on which the two label maps agree; the same for ``--hippocampus``
real MR cases of ``bundles/hippocampus``; and a whole ``medfcn infer`` process against ``python -m
monai.bundle run`` of the same bundle on the same cases.

Usage:
    python benchmarks/bench_inference.py                       # 256x256x128 and 512x512x300, all configs
    python benchmarks/bench_inference.py --modes --no-infer-cli   # issue 15 only: stages, labels, CLI vs bundle run
    python benchmarks/bench_inference.py --sizes 128x128x64 --repeats 2 --no-infer-cli   # quick
    python benchmarks/bench_inference.py --threads 2 --infer-cli-size 512x512x300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "bundles" / "liver"


def _vm_hwm_mib() -> float:
    """Peak resident set size of this process in MiB (Linux ``VmHWM``); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _parse_size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be XxYxZ, got {text!r}")
    return parts  # type: ignore[return-value]


def _write_ct(shape: tuple[int, int, int], path: Path, seed: int = 0) -> None:
    """A synthetic abdominal CT (HU, int16, 0.8 x 0.8 x 2.5 mm, LPS-like axes) as NIfTI."""
    import nibabel as nib
    import numpy as np

    from medfcn.data.synthetic import make_phantom

    ph = make_phantom(shape, spacing=(0.8, 0.8, 2.5), seed=seed, orientation="lps")
    nib.save(nib.Nifti1Image(np.asarray(ph.image).astype(np.int16), np.asarray(ph.affine)), path)


def _seeded_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` with seeded random weights of its ``network_def`` (for a bundle not trained yet).

    Speed and memory do not depend on weight values, so the benchmark needs no training run.
    """
    from medfcn.bundle import copy_bundle, save_random_weights

    copy_bundle(bundle, dest)
    save_random_weights(dest, seed=0)
    return dest


def _unet() -> Any:
    from monai.networks.nets import UNet

    return UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)


# ----------------------------------------------------------------------------------------------- worker


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (child) process and return its measurements."""
    import torch

    torch.set_num_threads(int(cfg["threads"]))
    from medfcn.engine.inference import Segmenter

    net = _unet() if cfg["net"] == "unet" else None
    seg = Segmenter(
        cfg["bundle"], device="cpu", amp="bf16" if cfg["precision"] == "bf16" else False, network=net
    )
    n_params = sum(p.numel() for p in seg.network.parameters())
    times: list[float] = []
    if cfg["mode"] == "pipeline":

        def once() -> None:
            seg(cfg["image"])

    else:
        loaded = seg.load(cfg["image"])  # preprocessed once, outside the timing
        x = loaded.data["image"].as_tensor()[None].contiguous()
        dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32

        def once() -> None:
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=dtype, enabled=cfg["precision"] == "bf16"),
            ):
                seg.inferer(x, seg.network)

    once()  # warm-up: oneDNN primitive creation, allocator growth
    for _ in range(int(cfg["repeats"])):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    roi = list(getattr(seg.inferer, "roi_size", []))
    return {
        **cfg,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mib": _vm_hwm_mib(),
        "params": n_params,
        "roi": roi,
        "overlap": getattr(seg.inferer, "overlap", None),
        "sw_batch_size": getattr(seg.inferer, "sw_batch_size", None),
    }


def _infer_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """A whole ``medfcn infer`` of one case in this process: wall time and peak memory."""
    from medfcn.cli.main import app

    t0 = time.perf_counter()
    args = ["infer", "--bundle", cfg["bundle"], "--input", cfg["image"], "--output", cfg["output"]]
    args += ["--device", "cpu", "--quiet", "--overwrite"] + (["--amp"] if cfg["precision"] == "bf16" else [])
    try:
        # standalone_mode=False: click returns the command's exit code instead of calling sys.exit
        code = app(args, standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    status = "ok" if code in (0, None) else f"exit {code}"
    return {**cfg, "seconds": time.perf_counter() - t0, "peak_rss_mib": _vm_hwm_mib(), "status": status}


def _run_child(kind: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])}
    proc = subprocess.run(
        [sys.executable, __file__, f"--{kind}", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**cfg, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


REFERENCE_TARGETS = {"medfcn.data.fast_spatial.FastSpacingd": "Spacingd"}
"""medfcn's fast transforms in the bundles' configs -> the MONAI transform each replaces (same arguments)."""

HIPPOCAMPUS = REPO / "bundles" / "hippocampus"
HIPPOCAMPUS_DATA = REPO.parent / "shared" / "data" / "msd-hippocampus"


def _reference_overrides(bundle: str) -> dict[str, str]:
    """Config overrides that turn the bundle back into the MONAI reference pipeline (today's transforms)."""
    config = json.loads((Path(bundle) / "configs" / "inference.json").read_text(encoding="utf-8"))
    return {
        f"preprocessing#transforms#{i}#_target_": REFERENCE_TARGETS[t["_target_"]]
        for i, t in enumerate(config["preprocessing"]["transforms"])
        if t.get("_target_") in REFERENCE_TARGETS
    }


def _case_stats_fn() -> Any:
    try:  # helper A moves the per-case outputs to medfcn.outputs
        from medfcn.outputs.stats import case_stats  # type: ignore[import-not-found]
    except ImportError:
        from medfcn.engine.stats import case_stats
    return case_stats


def _stage_times(seg: Any, image: str, out_dir: Path, name: str) -> tuple[dict[str, float], Any]:
    """Every step of one case through the bundle's pipeline, timed alone; the label map is returned."""
    import nibabel as nib
    import numpy as np
    import torch

    times: dict[str, float] = {}

    def tick(key: str, t0: float) -> float:
        now = time.perf_counter()
        times[key] = times.get(key, 0.0) + now - t0
        return now

    t = time.perf_counter()
    d = seg._load({seg.image_key: image})
    t = tick("load (LoadImaged)", t)
    source = d[seg.image_key]
    for tr in seg._after_load.transforms:
        d = tr(d)
        t = tick(type(tr).__name__, t)
    x = d[seg.image_key].as_tensor()[None]
    with torch.inference_mode():
        logits = seg.inferer(x, seg.network)
        t = tick("sliding window (network)", t)
        probs = seg._logits_to_probs(torch.as_tensor(logits)[0])
        t = tick("softmax", t)
        inv = seg.post_invert({seg.image_key: d[seg.image_key], "pred": probs})["pred"]
        t = tick("invert to the source grid", t)
        label = seg.post_discrete({"pred": inv})["pred"]
        t = tick("argmax", t)
    lab = np.asarray(torch.as_tensor(label)[0].to(torch.uint8).numpy())
    affine = np.asarray(source.affine, dtype=np.float64)
    nib.save(nib.Nifti1Image(lab, affine), str(out_dir / f"{name}.nii.gz"))
    t = tick("write mask.nii.gz", t)
    img = np.asarray(torch.as_tensor(source).numpy())
    _case_stats_fn()(
        lab,
        affine,
        class_names={int(k): str(v) for k, v in seg.class_names.items()},
        image=img[0] if img.ndim == 4 else img,
        probabilities=np.asarray(torch.as_tensor(inv).numpy()),
    )
    tick("statistics", t)
    return times, lab


def _stages_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One case, stage by stage, fp32, with the bundle as shipped or as the MONAI reference; label saved."""
    import numpy as np
    import torch

    torch.set_num_threads(int(cfg["threads"]))
    from medfcn.engine.inference import Segmenter

    overrides = _reference_overrides(cfg["bundle"]) if cfg["reference"] else {}
    seg = Segmenter(cfg["bundle"], device="cpu", amp=False, overrides=overrides)
    out = Path(cfg["out"])
    times, lab = _stage_times(seg, cfg["image"], out, cfg["name"])
    np.save(out / f"{cfg['name']}.npy", lab)
    return {**cfg, "times": times, "peak_rss_mib": _vm_hwm_mib()}


def _label_agreement(a: Any, b: Any, classes: list[int]) -> dict[str, Any]:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    dice = {}
    for c in classes:
        ma, mb = a == c, b == c
        total = int(ma.sum()) + int(mb.sum())
        dice[c] = 1.0 if total == 0 else 2.0 * int(np.logical_and(ma, mb).sum()) / total
    return {"equal": float((a == b).mean()), "voxels": int(a.size), "dice": dice}


def _hippocampus_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """N real cases through both pipelines in one process: per-case time sums and label agreement."""
    import numpy as np
    import torch

    torch.set_num_threads(int(cfg["threads"]))
    from medfcn.engine.inference import Segmenter

    segs = {
        "medfcn": Segmenter(cfg["bundle"], device="cpu", amp=False),
        "reference": Segmenter(cfg["bundle"], device="cpu", amp=False, overrides=_reference_overrides(cfg["bundle"])),
    }
    seconds = {k: 0.0 for k in segs}
    equal = voxels = 0
    inter: dict[int, int] = {}
    sums: dict[int, int] = {}
    classes = [int(k) for k in segs["medfcn"].class_names if int(k) != 0]
    for image in cfg["images"]:
        labels = {}
        for key, seg in segs.items():
            t0 = time.perf_counter()
            labels[key] = seg(image).label.numpy()
            seconds[key] += time.perf_counter() - t0
        a, b = labels["medfcn"], labels["reference"]
        equal += int((a == b).sum())
        voxels += int(a.size)
        for c in classes:
            inter[c] = inter.get(c, 0) + int(np.logical_and(a == c, b == c).sum())
            sums[c] = sums.get(c, 0) + int((a == c).sum()) + int((b == c).sum())
    dice = {c: 1.0 if sums[c] == 0 else 2.0 * inter[c] / sums[c] for c in classes}
    return {**cfg, "images": len(cfg["images"]), "seconds": seconds, "equal": equal / max(voxels, 1),
            "voxels": voxels, "dice": dice}  # fmt: skip


def _bundle_run(bundle: str, images: list[str], out: Path, threads: int, timeout: float) -> dict[str, Any]:
    """``python -m monai.bundle run`` of the bundle's inference.json on ``images`` (CPU): wall time."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--bundle_root", bundle, "--datalist", repr(images), "--output_dir", str(out),
           "--device", "$torch.device('cpu')", "--amp", "False"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "seconds": wall}
    return {"seconds": wall, "outputs": len(list(out.rglob("*.nii.gz")))}


def _cli_infer(bundle: str, folder: Path, out: Path, threads: int, timeout: float) -> dict[str, Any]:
    """A whole ``medfcn infer`` process (start-up included, fp32, CPU): wall time."""
    cmd = [sys.executable, "-m", "medfcn", "infer", "--bundle", bundle, "--input", str(folder), "--output", str(out),
           "--device", "cpu", "--quiet", "--overwrite"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "seconds": wall}
    return {"seconds": wall, "outputs": len(list(out.glob("*/mask.nii.gz")))}


def _pipeline_report(args: argparse.Namespace, bundle: str, tmp: Path, target_rows: list[list[str]]) -> None:
    """Issue 15: stages of one CT (shipped vs MONAI reference), label agreement, CLI vs ``monai.bundle run``."""
    import numpy as np

    size = args.infer_cli_size
    folder = tmp / "stages_input"
    folder.mkdir(exist_ok=True)
    image = folder / f"ct_{_fmt_size(size)}.nii.gz"
    _write_ct(size, image)
    cases = [("liver", bundle, str(image), f"synthetic CT {_fmt_size(size)}")]
    real_ct = REPO.parent / "shared" / "data" / "real-ct" / "totalsegmentator" / "example_ct.nii.gz"
    if real_ct.is_file():
        cases.append(("liver", bundle, str(real_ct), "real CT example_ct (122x101x112, 3 mm)"))
    runs: dict[tuple[str, bool], dict[str, Any]] = {}
    agreement_rows = []
    for i, (_, b, img, what) in enumerate(cases):
        for reference in (False, True):
            cfg = {"bundle": b, "image": img, "out": str(tmp), "name": f"case{i}_{'ref' if reference else 'new'}",
                   "reference": reference, "threads": args.threads}  # fmt: skip
            r = _run_child("stages-worker", cfg, args.timeout)
            runs[(what, reference)] = r
            msg = r.get("error") or f"{sum(r['times'].values()):.1f} s, {r['peak_rss_mib']:.0f} MiB"
            print(f"  stages {what} {'reference' if reference else 'medfcn'}: {msg}", file=sys.stderr, flush=True)
        new, ref = runs[(what, False)], runs[(what, True)]
        if "error" in new or "error" in ref:
            continue
        a, r_ = np.load(tmp / f"{new['name']}.npy"), np.load(tmp / f"{ref['name']}.npy")
        agree = _label_agreement(a, r_, [1, 2])
        agreement_rows.append(
            ["liver", what, f"{100 * agree['equal']:.4f} %", ", ".join(f"{agree['dice'][c]:.5f}" for c in (1, 2))]
        )
        ok = agree["equal"] >= 0.9999 and min(agree["dice"].values()) >= 0.999
        target_rows.append([f"labels equal today's, liver, {what}", f"{100 * agree['equal']:.4f} %, Dice >= "
                            f"{min(agree['dice'].values()):.5f}", "met" if ok else "NOT met"])  # fmt: skip
        if i == 0:
            rows, total_new, total_ref = [], sum(new["times"].values()), sum(ref["times"].values())
            keys = list(dict.fromkeys([*ref["times"], *new["times"]]))
            names = {"FastSpacingd": "Spacingd"}
            merged: dict[str, list[float]] = {}
            for k in keys:
                merged.setdefault(names.get(k, k), [0.0, 0.0])
                merged[names.get(k, k)][0] += ref["times"].get(k, 0.0)
                merged[names.get(k, k)][1] += new["times"].get(k, 0.0)
            for k, (tr, tn) in merged.items():
                rows.append([k, f"{tr:.2f}", f"{100 * tr / total_ref:.1f} %", f"{tn:.2f}", f"{100 * tn / total_new:.1f} %",
                             f"{tr / tn:.2f}x" if tn > 0 else ""])  # fmt: skip
            rows.append(["**total**", f"{total_ref:.2f}", "100 %", f"{total_new:.2f}", "100 %", f"{total_ref / total_new:.2f}x"])
            rows.append(["peak RSS GiB", f"{ref['peak_rss_mib'] / 1024:.2f}", "", f"{new['peak_rss_mib'] / 1024:.2f}", "", ""])
            print(f"\n## Stages of one case, fp32 ({what}; seconds, share of the case; MONAI reference vs medfcn)\n")
            print(_table(["stage", "reference s", "share", "medfcn s", "share", "reference / medfcn"], rows))
            net = new["times"].get("sliding window (network)", 0.0)
            if net:
                target_rows.append([f"pipeline of one case / sliding window, {_fmt_size(size)} fp32 (stages)",
                                    f"{total_new / net:.2f}x", "met" if total_new / net <= 2.5 else "NOT met"])  # fmt: skip

    cli_rows = []
    out_cli, out_run = tmp / "cli_out", tmp / "run_out"
    cli = _cli_infer(bundle, folder, out_cli, args.threads, args.timeout)
    run = _bundle_run(bundle, [str(image)], out_run, args.threads, args.timeout)
    cli_rows.append(["liver", f"1 x {_fmt_size(size)}", _secs(cli), _secs(run), _ratio(run, cli)])
    net = runs.get((cases[0][3], False), {}).get("times", {}).get("sliding window (network)")
    if net and "error" not in cli:
        target_rows.append([f"whole medfcn infer / sliding window, {_fmt_size(size)} fp32", f"{cli['seconds'] / net:.2f}x",
                            "met" if cli["seconds"] / net <= 2.5 else "NOT met"])  # fmt: skip
    if args.hippocampus and HIPPOCAMPUS_DATA.is_dir():
        images = [str(p) for p in sorted((HIPPOCAMPUS_DATA / "imagesTr").glob("*.nii.gz"))[: args.hippocampus]]
        hip = tmp / "hippocampus_input"
        hip.mkdir(exist_ok=True)
        for p in images:
            (hip / Path(p).name).symlink_to(p)
        cfg = {"bundle": str(HIPPOCAMPUS), "images": images, "threads": args.threads}
        h = _run_child("hippocampus-worker", cfg, args.timeout)
        if "error" not in h:
            agreement_rows.append(["hippocampus", f"{h['images']} real MR cases", f"{100 * h['equal']:.4f} %",
                                   ", ".join(f"{v:.5f}" for v in h["dice"].values())])  # fmt: skip
            ok = h["equal"] >= 0.9999 and min(h["dice"].values()) >= 0.999
            target_rows.append([f"labels equal today's, hippocampus, {h['images']} cases",
                                f"{100 * h['equal']:.4f} %, Dice >= {min(h['dice'].values()):.5f}",
                                "met" if ok else "NOT met"])  # fmt: skip
            print(f"\n## Hippocampus, {h['images']} real cases in one process (sum of per-case seconds, fp32)\n")
            print(_table(["pipeline", "seconds"], [[k, f"{v:.2f}"] for k, v in h["seconds"].items()]))
        cli_h = _cli_infer(str(HIPPOCAMPUS), hip, tmp / "hip_cli", args.threads, args.timeout)
        run_h = _bundle_run(str(HIPPOCAMPUS), images, tmp / "hip_run", args.threads, args.timeout)
        cli_rows.append(["hippocampus", f"{len(images)} real MR", _secs(cli_h), _secs(run_h), _ratio(run_h, cli_h)])
    print("\n## Labels: medfcn's transforms against the MONAI reference pipeline (today's configs)\n")
    print(_table(["bundle", "case", "voxels equal", "Dice per class"], agreement_rows))
    print("\n## `medfcn infer` against `python -m monai.bundle run` (whole processes, fp32, start-up included)\n")
    print(_table(["bundle", "cases", "medfcn infer s", "monai.bundle run s", "run / infer"], cli_rows))


def _secs(r: dict[str, Any]) -> str:
    return f"error: {r['error'][:50]}" if "error" in r else f"{r['seconds']:.1f}"


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    return "" if "error" in a or "error" in b else f"{a['seconds'] / b['seconds']:.2f}x"


# ----------------------------------------------------------------------------------------------- tables


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(out)


def _fmt_size(s: tuple[int, int, int] | list[int]) -> str:
    return "x".join(str(v) for v in s)


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every configuration in a child process, print the tables (Markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle (default bundles/liver)")
    p.add_argument("--sizes", type=_parse_size, nargs="+", default=[(256, 256, 128), (512, 512, 300)])
    p.add_argument("--nets", nargs="+", choices=["fcn", "unet"], default=["fcn", "unet"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--modes", nargs="*", choices=["net", "pipeline"], default=["net", "pipeline"])
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--infer-cli", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--infer-cli-size", type=_parse_size, default=(512, 512, 300))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                   help="issue 15: stages of one case, label agreement, medfcn infer vs monai.bundle run")
    p.add_argument("--hippocampus", type=int, default=60, help="real hippocampus cases for --stages (0: none)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--infer-worker", help=argparse.SUPPRESS)
    p.add_argument("--stages-worker", help=argparse.SUPPRESS)
    p.add_argument("--hippocampus-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, fn in (("worker", _worker), ("infer_worker", _infer_worker), ("stages_worker", _stages_worker),
                     ("hippocampus_worker", _hippocampus_worker)):  # fmt: skip
        if getattr(args, name):
            print(json.dumps(fn(json.loads(getattr(args, name)))))
            return 0

    import monai
    import torch

    from medfcn.bundle import load_bundle
    from medfcn.engine.inference import cpu_has_bf16

    print(f"# bench_inference {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, threads={args.threads}, "
        f"cpu bf16 units: {'yes' if cpu_has_bf16() else 'no'}, torch {torch.__version__}, monai {monai.__version__}"
    )
    print(
        f"# command: python benchmarks/bench_inference.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medfcn-bench-") as tmp:
        source = args.bundle.resolve()
        if load_bundle(source).trained:
            bundle = str(source)
            print(f"# bundle {bundle}")
        else:
            bundle = str(_seeded_copy(source, Path(tmp) / "bundle"))
            print(
                f"# bundle {source} (no weights yet: a copy with seeded random weights; speed does not depend on them)"
            )
        for size in args.sizes:
            image = Path(tmp) / f"ct_{_fmt_size(size)}.nii.gz"
            _write_ct(size, image)
            for mode in args.modes:
                for net in args.nets:
                    for precision in args.precisions:
                        cfg = {
                            "bundle": bundle,
                            "image": str(image),
                            "size": list(size),
                            "net": net,
                            "precision": precision,
                            "mode": mode,
                            "repeats": args.repeats,
                            "threads": args.threads,
                        }
                        r = _run_child("worker", cfg, args.timeout)
                        results.append(r)
                        what = f"{_fmt_size(size)} {mode} {net} {precision}"
                        msg = r.get("error") or f"{r['median_s']:.2f} s, {r['peak_rss_mib']:.0f} MiB"
                        print(f"  {what}: {msg}", file=sys.stderr, flush=True)
        rows = []
        for r in results:
            if "error" in r:
                rows.append(
                    [_fmt_size(r["size"]), r["mode"], r["net"], r["precision"], "error", "", r["error"][:60]]
                )
                continue
            rows.append(
                [
                    _fmt_size(r["size"]),
                    r["mode"],
                    r["net"],
                    r["precision"],
                    f"{r['median_s']:.2f}",
                    f"{r['peak_rss_mib']:.0f}",
                    f"roi {_fmt_size(r['roi'])}, ov {r['overlap']}, swb {r['sw_batch_size']}, "
                    f"{r['params'] / 1e6:.2f} M params",
                ]
            )
        if rows:
            print(f"\n## Sliding-window inference (median of {args.repeats}, seconds; peak RSS MiB)\n")
            print(_table(["size", "mode", "net", "precision", "median s", "peak RSS MiB", "settings"], rows))

        def med(size: list[int], mode: str, net: str, prec: str) -> float | None:
            for r in results:
                key = (r["size"], r["mode"], r["net"], r["precision"])
                if key == (size, mode, net, prec) and "median_s" in r:
                    return float(r["median_s"])
            return None

        ratio_rows = []
        for size in args.sizes:
            for mode in args.modes:
                for prec in args.precisions:
                    f, u = med(list(size), mode, "fcn", prec), med(list(size), mode, "unet", prec)
                    if f and u:
                        ratio_rows.append(
                            [_fmt_size(size), mode, f"UNet / FCN time, {prec}", f"{u / f:.2f}x"]
                        )
                for net in args.nets:
                    a, b = med(list(size), mode, net, "fp32"), med(list(size), mode, net, "bf16")
                    if a and b:
                        ratio_rows.append(
                            [_fmt_size(size), mode, f"{net}: fp32 / bf16 time", f"{a / b:.2f}x"]
                        )
        if ratio_rows:
            print("\n## Ratios (same run; >1 means the second is faster)\n")
            print(_table(["size", "mode", "ratio", "value"], ratio_rows))

        target_rows = []
        for size in args.sizes:
            for prec in args.precisions:
                f, u = med(list(size), "net", "fcn", prec), med(list(size), "net", "unet", prec)
                if f and u:
                    target_rows.append(
                        [f"FCN >= 1.5x faster than UNet, {_fmt_size(size)} net {prec}", f"{u / f:.2f}x",
                         "met" if u / f >= 1.5 else "NOT met"]
                    )  # fmt: skip
            a, b = med(list(size), "net", "fcn", "fp32"), med(list(size), "net", "fcn", "bf16")
            if a and b:
                target_rows.append(
                    [f"FCN bf16 >= 2x faster than fp32, {_fmt_size(size)} net", f"{a / b:.2f}x",
                     "met" if a / b >= 2.0 else "NOT met"]
                )  # fmt: skip

        if args.infer_cli:
            size = args.infer_cli_size
            image = Path(tmp) / "cli_input" / f"cli_{_fmt_size(size)}.nii.gz"  # apart from the outputs
            image.parent.mkdir(exist_ok=True)
            _write_ct(size, image)
            cli_rows = []
            for prec in args.precisions:
                cfg = {
                    "bundle": bundle,
                    "image": str(image),
                    "output": str(Path(tmp) / f"out_{prec}"),
                    "precision": prec,
                    "threads": args.threads,
                    "size": list(size),
                }
                r = _run_child("infer-worker", cfg, args.timeout)
                if "error" in r or r["status"] != "ok":
                    why = r.get("error") or r["status"]
                    cli_rows.append([_fmt_size(size), prec, "error", "", why[:80]])
                else:
                    cli_rows.append(
                        [
                            _fmt_size(size),
                            prec,
                            f"{r['seconds']:.1f}",
                            f"{r['peak_rss_mib'] / 1024:.2f}",
                            r["status"],
                        ]
                    )
            print("\n## Whole `medfcn infer` of one case (wall s incl. startup of the model; peak RSS GiB)\n")
            print(_table(["size", "precision", "seconds", "peak RSS GiB", "status"], cli_rows))
            for row in cli_rows:
                if row[2] != "error":
                    ok = float(row[2]) < 60 and float(row[3]) < 6
                    target_rows.append(
                        [f"medfcn infer {row[0]} {row[1]} < 60 s and < 6 GiB", f"{row[2]} s, {row[3]} GiB",
                         "met" if ok else "NOT met"]
                    )  # fmt: skip
        if args.stages:
            _pipeline_report(args, bundle, Path(tmp), target_rows)
        if target_rows:
            print(f"\n## Targets (issues 7 and 15; from the figures above; load average now "
                  f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})\n")  # fmt: skip
            print(_table(["target", "measured", "status"], target_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
