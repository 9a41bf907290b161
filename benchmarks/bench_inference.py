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

Usage:
    python benchmarks/bench_inference.py                       # 256x256x128 and 512x512x300, all configs
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
    p.add_argument("--modes", nargs="+", choices=["net", "pipeline"], default=["net", "pipeline"])
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--infer-cli", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--infer-cli-size", type=_parse_size, default=(512, 512, 300))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--infer-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.infer_worker:
        print(json.dumps(_infer_worker(json.loads(args.infer_worker))))
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
        if target_rows:
            print("\n## Targets of issue 7 (from the figures above)\n")
            print(_table(["target", "measured", "status"], target_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
