"""One whole ``medfcn infer`` of one generated CT, stage by stage: seconds and peak memory of each stage.

Where ``bench_inference.py --modes`` times each transform of the bundle alone, this runs the real command (CLI
parsing, discovery, the loader thread, the case outputs and run files) in this process and watches it: a
sampler thread reads the resident memory every 5 ms and charges it to the stage running at that moment
(wrappers around the bundle's load, preprocessing, inferer, activation, inversion and argmax, and around the
output writers). It prints the seconds of each stage, its peak resident memory, the wall time until the
command returns, the process's peak (``VmHWM``; target at most 3 GiB for 512x512x300), and, from the parent,
the whole process from its spawn to its exit (the interpreter's start and its teardown included: 1-1.4 s of
exit alone before ``medfcn.cli.main`` froze the garbage collector) and its ratio to the network's sliding
window (issue 15's target: at most 2.5x).

An untrained bundle runs through a copy with seeded random weights (time and memory do not depend on the
values, but the statistics of a random prediction, which is foreground almost everywhere, cost more than a
trained network's). Stages of the output thread (NIfTI, preview) overlap the statistics: their seconds are
not additive. "start-up" is the time from the interpreter's start to the first stage (every import, the CLI,
the bundle, the network); "between stages" the rest of the main thread's time (discovery, waiting for the
output thread, the run files).

    python benchmarks/bench_case.py                          # 512x512x300, bundles/liver, fp32
    python benchmarks/bench_case.py --size 256x256x128 --amp
    python benchmarks/bench_case.py --runs 3                 # three fresh processes: the median whole / network
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # the child's whole command is timed from here (every heavy import included)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024**2
    return float("nan")


class _Watch:
    """Which stage runs now, its seconds and the peak resident memory seen while it ran."""

    def __init__(self) -> None:
        self.stage = "start-up"
        self.order: list[str] = []
        self.peak: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.main_stages: set[str] = set()
        self.first_start: float | None = None  # when the first stage began: the start-up ends there
        self.lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = _status_gib("VmRSS")
            with self.lock:
                stage = self.stage
                if stage not in self.peak:
                    self.order.append(stage)
                self.peak[stage] = max(self.peak.get(stage, 0.0), rss)
            time.sleep(0.005)

    def wrap(self, fn: Callable[..., Any], stage: str, main: bool = True) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = self.stage
            if main:
                self.stage = stage
            t0 = time.perf_counter()
            if main:
                self.main_stages.add(stage)
                if self.first_start is None:
                    self.first_start = t0
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
                if main:
                    self.stage = "between stages" if before == "start-up" else before

        return run


def _instrument(watch: _Watch) -> None:
    """Wrap the stages of every Segmenter made from now on, and the case writers."""
    import medfcn.outputs.case as case
    import medfcn.outputs.stats as stats
    from medfcn.engine.segmenter import Segmenter

    prepare = Segmenter._prepare_network

    def prepared(self: Segmenter, net: Any) -> None:
        prepare(self, net)
        if self._load is not None:
            self._load = watch.wrap(self._load, "load")  # type: ignore[assignment]
        self._after_load = watch.wrap(self._after_load, "preprocessing")  # type: ignore[assignment]
        self.inferer = watch.wrap(self.inferer, "sliding window (network)")
        self.post_activation = watch.wrap(self.post_activation, "softmax")
        self.post_invert = watch.wrap(self.post_invert, "invert to the source grid")
        self.post_discrete = watch.wrap(self.post_discrete, "argmax")

    Segmenter._prepare_network = prepared  # type: ignore[method-assign]
    # the output thread's stages: timed, but the memory stays charged to the main thread's stage
    case._write_images = watch.wrap(case._write_images, "NIfTI + preview (output thread)", main=False)
    stats.case_stats = watch.wrap(stats.case_stats, "statistics")


def _child(scans: Path, bundle: Path, out: Path, amp: bool, threads: int | None, size: str) -> int:
    """The measured process: a fresh interpreter that runs ``medfcn infer`` as a user would."""
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here on
        f.write("5")
    watch = _Watch()
    if threads:
        import torch

        torch.set_num_threads(threads)
    _instrument(watch)  # imports medfcn's case writers only; MONAI and the network come with the command
    from medfcn.cli.main import main as medfcn_main

    sys.argv = ["medfcn", "infer", "--bundle", str(bundle), "--input", str(scans), "--output", str(out),
                "--device", "cpu", "--quiet"] + (["--amp"] if amp else [])  # fmt: skip
    code: Any = 0
    try:
        medfcn_main()  # the console script's own entry point (what it does at exit included)
    except SystemExit as exc:
        code = exc.code
    wall = time.perf_counter() - T_START
    time.sleep(0.02)
    if code not in (0, None):
        print(f"medfcn infer exited {code}", file=sys.stderr)
        return 1

    import torch

    print(f"# One `medfcn infer` of a {size} CT, stage by stage ({'bf16' if amp else 'fp32'})")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"bundle {bundle}")  # fmt: skip
    print()
    print("| stage | seconds | peak RSS GiB |")
    print("|---|---:|---:|")
    startup = (watch.first_start or T_START) - T_START
    staged = sum(v for k, v in watch.seconds.items() if k in watch.main_stages)
    timed = {"start-up": startup, "between stages": wall - startup - staged}  # imports ... ; discovery, run files
    for stage in dict.fromkeys([*watch.order, *watch.seconds]):
        secs = watch.seconds.get(stage, timed.get(stage))
        peak = watch.peak.get(stage)
        print(f"| {stage} | {'' if secs is None else f'{secs:.2f}'} | {'' if peak is None else f'{peak:.2f}'} |")
    net = watch.seconds.get("sliding window (network)", float("nan"))
    hwm = _status_gib("VmHWM")
    print(f"| **whole medfcn infer (until the command returns)** | **{wall:.2f}** | **{hwm:.2f}** (VmHWM) |")
    print()
    print(f"network: {net:.3f} s; peak {hwm:.2f} GiB (target <= 3 GiB)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size", default="512x512x300", help="CT shape XxYxZ at 0.8x0.8x2.5 mm (default 512x512x300)")
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / "liver"), help="bundle (default bundles/liver)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (--amp) instead of fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--runs", type=int, default=1, help="fresh processes on the same CT; the median ratio is printed")
    ap.add_argument("--child", nargs=3, metavar=("SCANS", "BUNDLE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        scans, bundle, out = (Path(p) for p in args.child)
        return _child(scans, bundle, out, args.amp, args.threads, args.size)

    import subprocess

    import bench_inference as bi

    with tempfile.TemporaryDirectory(prefix="medfcn-bench-case-") as name:
        tmp = Path(name)
        scans = tmp / "scans"
        scans.mkdir()
        bi._write_ct(bi._parse_size(args.size), scans / "ct.nii.gz")
        bundle = Path(args.bundle)
        if not (bundle / "models" / "model.pt").is_file():
            bundle = bi._seeded_copy(bundle, tmp / bundle.name)
        ratios: list[float] = []
        for run in range(args.runs):
            out = tmp / f"out{run}"
            child = [sys.executable, __file__, "--size", args.size, "--child", str(scans), str(bundle), str(out)]
            child += ["--amp"] if args.amp else []
            child += ["--threads", str(args.threads)] if args.threads else []
            t0 = time.perf_counter()
            done = subprocess.run(child, check=False, stdout=subprocess.PIPE, text=True)
            process = time.perf_counter() - t0  # the interpreter's start and its exit included
            print(done.stdout, end="", flush=True)
            if done.returncode:
                return done.returncode
            found = re.search(r"network: ([0-9.]+) s", done.stdout)
            if found:
                ratios.append(process / float(found.group(1)))
                print(f"whole process, spawn to exit: {process:.2f} s; whole / network: {ratios[-1]:.2f}x "
                      "(target <= 2.5x)\n", flush=True)  # fmt: skip
        if len(ratios) > 1:
            print("\n" + median_line(ratios))
        return 0


def median_line(ratios: list[float]) -> str:
    """The summary of several runs: the median whole / network ratio and each run's."""
    shown = ", ".join(f"{r:.2f}x" for r in ratios)
    return f"whole / network over {len(ratios)} runs: median {statistics.median(ratios):.2f}x ({shown})"


if __name__ == "__main__":
    raise SystemExit(main())
