"""Where bf16 autocast gains on this CPU: every convolution of the bundle network, fp32 vs bf16, one by one.

Usage::

    python benchmarks/bench_bf16.py                       # bundles/liver network, batch 2 of 96³, CPU
    python benchmarks/bench_bf16.py --repeats 20 --batch 2 --patch 96x96x96

The bundle's ``network_def`` runs once on a ``--batch`` of ``--patch`` patches (the sliding-window batch)
with forward hooks that record the input shape of every ``ConvNd`` / ``ConvTransposeNd`` and of every
``F.conv`` call made by :class:`~medfcn.networks.fcn.ScoreUpsample` (its sub-pixel convolution). Each
distinct (layer, input shape) is then timed alone: ``--repeats`` calls after ``--warmup``, median, in fp32
and in bf16 (autocast with the layer's weights stored in bf16, as :func:`medfcn.runtime.apply_precision_policy`
does: under ``torch.inference_mode()`` autocast re-casts every weight on every call), interleaved. The
``policy`` column is the precision medfcn picks for the layer on this CPU. The table gives ms per call,
GFLOP/s (2 x MACs of the convolution) and the fp32 / bf16 ratio, weighted to the layer's share of the
network. The last rows time the whole network: fp32, plain bf16 autocast (medfcn before the policy),
and the policy.

Why it exists: the bf16 speed-up of the whole network is bounded by what oneDNN's bf16 kernels gain over
its fp32 kernels on the CPU at hand. With AMX (Sapphire Rapids and later) wide bf16 convolutions run
several times faster than fp32, and narrow or weight-bound ones slower; with AVX512-BF16 alone
(``vdpbf16ps``: two bf16 products per fp32 lane) about 2x at best. The CPU flags are printed with the table.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "bundles" / "liver"


def _parse_size(text: str) -> tuple[int, ...]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be XxYxZ, got {text!r}")
    return parts


def _cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"]
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def _network(bundle: Path) -> nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def", lazy=False).eval()


def _conv_calls(net: nn.Module, x: torch.Tensor) -> list[tuple[str, Callable[[], Any], float]]:
    """(description, call, MACs) of every convolution the network runs on ``x``, in call order."""
    calls: list[tuple[str, Callable[[], Any], float]] = []
    hooks = []

    def record(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            inp = args[0].detach().clone()
            w = mod.weight
            transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
            cin, cout = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
            # a convolution gathers k inputs per output voxel; a transposed one scatters each input voxel
            voxels = (inp if transposed else out).shape[2:].numel()
            macs = float(inp.shape[0] * voxels * cin * cout * w.shape[2:].numel())
            kind = "convT" if transposed else "conv"
            calls.append(
                (
                    f"{name} {kind} {cin}->{cout} k{tuple(w.shape[2:])} in {tuple(inp.shape)}",
                    lambda: mod(inp),
                    macs,
                )
            )

        return hook

    for name, module in net.named_modules():  # ScoreUpsample never calls its .conv: recorded below
        if isinstance(module, nn.modules.conv._ConvNd):
            hooks.append(module.register_forward_hook(record(name, module)))

    from medfcn.networks.fcn import ScoreUpsample

    def record_up(name: str) -> Callable[..., None]:
        def hook(mod: ScoreUpsample, args: tuple[Any, ...], out: torch.Tensor) -> None:
            inp = args[0].detach().clone()
            padded = F.pad(inp, mod.input_pad)
            weight = mod.subpixel_weight().detach()
            conv = F.conv3d if mod.spatial_dims == 3 else F.conv2d
            macs = float(inp.shape[0] * inp.shape[2:].numel() * weight.shape[0] * weight.shape[1:].numel())
            calls.append(
                (
                    f"{name} sub-pixel conv {weight.shape[1]}->{weight.shape[0]} k{tuple(weight.shape[2:])} in {tuple(inp.shape)}",
                    lambda: conv(padded, weight),
                    macs,
                )
            )

        return hook

    for name, module in net.named_modules():
        if isinstance(module, ScoreUpsample):
            hooks.append(module.register_forward_hook(record_up(name)))
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    return calls


def _time(fn: Callable[[], Any], bf16: bool, warmup: int, repeats: int) -> list[float]:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


_STAT: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def _interleaved(
    fns: list[tuple[Callable[[], Any], bool]], warmup: int, repeats: int, stat: str = "median"
) -> list[float]:
    """Median (or min) seconds of each (call, bf16) pair, timed in interleaved halves (A B A B: a burst of
    load hits all of them)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(2):
        for i, (fn, bf16) in enumerate(fns):
            times[i] += _time(fn, bf16, warmup, (repeats + 1) // 2)
    return [_STAT[stat](t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle (default bundles/liver)")
    p.add_argument("--patch", type=_parse_size, default=(96, 96, 96), help="patch size (the roi)")
    p.add_argument("--batch", type=int, default=2, help="patches per call (the sw_batch_size)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--top", type=int, default=0, help="print only the N most expensive layers (0: all)")
    p.add_argument(
        "--stat",
        choices=sorted(_STAT),
        default="median",
        help="statistic of the repeats; min is the robust one on a machine shared with other work",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from medfcn.runtime import apply_precision_policy, autocast_dtype, cpu_bf16_units, layer_precisions

    units = cpu_bf16_units()
    amp_dtype = autocast_dtype("cpu", True, units=units)  # what --amp runs in here: None (fp32) without bf16 units
    print(f"# bench_bf16 {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, threads={args.threads}, "
        f"torch {torch.__version__}; CPU flags: {_cpu_flags()}"
    )
    print(
        f"# command: python benchmarks/bench_bf16.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    net = _network(args.bundle)
    # every convolution in bf16 with its weights cast once (what autocast computes, without its per-call
    # weight casts, which inference_mode does not cache), and the network as medfcn runs it on this CPU
    all_bf16 = copy.deepcopy(net)
    apply_precision_policy(all_bf16, torch.bfloat16, "cpu", units=["AVX512-BF16"])
    x = torch.randn(args.batch, 1, *args.patch, generator=torch.Generator().manual_seed(0))
    policy_net = copy.deepcopy(net)
    plan = apply_precision_policy(
        policy_net, amp_dtype, "cpu", units=units, input_shape=tuple(x.shape), amp_requested=True
    )
    chosen = layer_precisions(policy_net) if amp_dtype is not None else dict.fromkeys(layer_precisions(net), "fp32")
    calls32 = _conv_calls(net, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        calls16 = _conv_calls(all_bf16, x)
    measured = []
    for (desc, fn32, macs), (_, fn16, _) in zip(calls32, calls16, strict=True):
        t32, t16 = _interleaved([(fn32, False), (fn16, True)], args.warmup, args.repeats, args.stat)
        layer = desc.split(" ")[0]
        pick = "fp32" if chosen.get(layer) == "fp32" else "bf16"
        measured.append((desc, t32, t16, macs, pick))
    total32 = sum(m[1] for m in measured)
    total16 = sum(m[2] for m in measured)
    total_pick = sum(m[1] if m[4] == "fp32" else m[2] for m in measured)
    order = sorted(measured, key=lambda m: -m[1])
    if args.top:
        order = order[: args.top]
    rows = [
        [
            desc,
            f"{t32 * 1e3:.2f}",
            f"{t16 * 1e3:.2f}",
            f"{2 * macs / t32 / 1e9:.0f}",
            f"{2 * macs / t16 / 1e9:.0f}",
            f"{t32 / t16:.2f}x",
            pick,
            f"{100 * t32 / total32:.1f}",
        ]
        for desc, t32, t16, macs, pick in order
    ]
    print(
        f"\n## Convolutions of the bundle network, batch {args.batch} x {'x'.join(map(str, args.patch))} ({args.stat} ms per call)\n"
    )
    print(
        f"bf16 = autocast with the weights in bf16; policy = the precision medfcn picks here ({plan.rule})\n"
    )
    print(
        _table(
            [
                "layer",
                "fp32 ms",
                "bf16 ms",
                "fp32 GFLOP/s",
                "bf16 GFLOP/s",
                "fp32 / bf16",
                "policy",
                "% of fp32 conv time",
            ],
            rows,
        )
    )
    w32, w16, wpol = _interleaved(
        [(lambda: net(x), False), (lambda: net(x), True), (lambda: policy_net(x), amp_dtype is not None)],
        args.warmup,
        args.repeats,
        args.stat,
    )
    best = max(m[1] / m[2] for m in measured)
    worst_pick = min(m[1] / (m[1] if m[4] == "fp32" else m[2]) for m in measured)
    print("\n## Summary\n")
    print(
        _table(
            ["what", "fp32 ms", "bf16 ms", "fp32 / bf16"],
            [
                [
                    "sum of the convolutions, each alone, all bf16",
                    f"{total32 * 1e3:.1f}",
                    f"{total16 * 1e3:.1f}",
                    f"{total32 / total16:.2f}x",
                ],
                [
                    "sum of the convolutions, each alone, policy",
                    f"{total32 * 1e3:.1f}",
                    f"{total_pick * 1e3:.1f}",
                    f"{total32 / total_pick:.2f}x",
                ],
                [
                    "whole network, plain autocast",
                    f"{w32 * 1e3:.1f}",
                    f"{w16 * 1e3:.1f}",
                    f"{w32 / w16:.2f}x",
                ],
                [
                    "whole network, medfcn policy",
                    f"{w32 * 1e3:.1f}",
                    f"{wpol * 1e3:.1f}",
                    f"{w32 / wpol:.2f}x",
                ],
                ["best single convolution in bf16", "", "", f"{best:.2f}x"],
                ["slowest convolution under the policy", "", "", f"{worst_pick:.2f}x"],
            ],
        )
    )
    print(f"\npolicy: {plan.rule}; fp32 layers: {', '.join(plan.fp32_layers) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
