"""Forward time per 96³ patch and parameter count: medfcn FCN configurations next to MONAI's UNet.

Usage::

    python benchmarks/bench_network.py                    # batch 2, 96³, fp32 + bf16 autocast, CPU
    python benchmarks/bench_network.py --repeats 10 --size 64 --only default,unet

Each model is timed in eval mode under ``torch.inference_mode()``: ``--warmup`` untimed passes, then
``--repeats`` timed passes; the table shows the median (and the min, which is less sensitive to other
processes sharing the CPU). The models are interleaved round by round so that a burst of load from other
processes affects all of them alike. ``ratio`` is the median time of MONAI's UNet divided by the model's
(> 1 means faster than the UNet).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from monai.networks.nets import UNet
from torch import nn

from medfcn.networks import FCN

__all__ = ["CONFIGS", "main", "time_forward"]

# name -> (description, factory)
CONFIGS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "unet": (
        "MONAI UNet(3,1,3,(16,32,64,128,256),(2,2,2,2),num_res_units=2)",
        lambda: UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2),
    ),
    "default": ("FCN() default: 5 stages, blocks (1,1,2,2,2), all 4 skips fused (sum)", lambda: FCN()),
    "fcn8s": ("FCN(fused_stages=2): FCN-8s-like, output from 1/8 scale", lambda: FCN(fused_stages=2)),
    "fcn32s": ("FCN(fused_stages=0): FCN-32s-like", lambda: FCN(fused_stages=0)),
    "concat": ("FCN(fusion='concat')", lambda: FCN(fusion="concat")),
    "deep": ("FCN(blocks=2): two residual units per stage", lambda: FCN(blocks=2)),
    "naive": (
        "FCN(strides=(1,2,2,2,2)): no strided stem, 16 ch at full resolution",
        lambda: FCN(strides=(1, 2, 2, 2, 2)),
    ),
}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_forward(model: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward pass of ``model`` on ``x`` (optionally under CPU bf16 autocast)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=96, help="cubic patch side in voxels (default 96)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per model and precision")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model and precision")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)"
    )
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast column")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    if "unet" not in names:
        names.insert(0, "unet")
    torch.manual_seed(0)
    models = {n: CONFIGS[n][1]().eval() for n in names}
    x = torch.randn(args.batch, 1, args.size, args.size, args.size)
    precisions = [False] if args.no_bf16 else [False, True]
    times: dict[tuple[str, bool], list[float]] = {(n, p): [] for n in names for p in precisions}
    for p in precisions:
        for n in names:
            for _ in range(args.warmup):
                time_forward(models[n], x, p)
    for r in range(args.repeats):
        for p in precisions:
            for n in names:
                times[(n, p)].append(time_forward(models[n], x, p))
        print(f"round {r + 1}/{args.repeats} done", flush=True)

    print(
        f"\nforward time per batch of {args.batch} x {args.size}³ patches, CPU, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; median (min) over {args.repeats} runs"
    )
    header = f"| {'model':<8} | {'params':>10} | {'fp32 s':>14} | {'fp32 ratio':>10} |"
    if True in precisions:
        header += f" {'bf16 s':>14} | {'bf16 ratio':>10} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for n in names:
        row = f"| {n:<8} | {count_parameters(models[n]):>10,} |"
        for p in precisions:
            med = statistics.median(times[(n, p)])
            ratio = statistics.median(times[("unet", p)]) / med
            row += f" {med:>6.3f} ({min(times[(n, p)]):.3f}) | {ratio:>10.2f} |"
        print(row)
    print()
    for n in names:
        print(f"  {n:<8} {CONFIGS[n][0]}")


if __name__ == "__main__":
    main()
