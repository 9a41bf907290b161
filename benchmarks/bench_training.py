"""Training throughput and equal-budget accuracy: medfcn FCN versus MONAI UNet on the CPU.

Part 1 (``throughput``): patches per second of one optimisation step (forward, Dice-CE loss, backward,
Adam step) on random patches of the bundle's ``patch_size``, batch ``--batch-size``, fp32 and bf16 autocast.
Median over ``--steps`` steps after ``--warmup`` warm-up steps, both networks in the same process run.

Part 2 (``budget``): trains both networks with the bundle's own training (``medfcn.engine.training.train``,
fp32, validation every ``val_interval`` epochs and best-checkpoint selection included) on a synthetic liver
dataset (``write_msd_dataset``, seed 0): the FCN and the UNet for the same ``--epochs``, then the FCN again
for the UNet's wall time (epochs scaled by the measured time per epoch). Each trained bundle is scored with
``medfcn.engine.evaluation.evaluate`` (Dice, HD95 on the source grid) on ``--test-cases`` phantoms of another
seed: cases that neither trained a network nor chose its checkpoint. The UNet runs in a copy of the bundle
whose ``network_def`` is replaced; everything else (preprocessing, patch sampling, loss, optimiser, epochs)
is the bundle's.

Usage:
    python benchmarks/bench_training.py                                 # both parts, default sizes
    python benchmarks/bench_training.py --parts throughput --steps 5    # quick
    python benchmarks/bench_training.py --parts budget --epochs 40 --cases 12 --shape 96x96x64 --patch 48x48x48
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
UNET_DEF: dict[str, Any] = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
}


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(out)


def _bundle_parser(bundle: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    return parser


def throughput(
    bundle: Path, *, batch_size: int, steps: int, warmup: int, precisions: list[str]
) -> list[list[str]]:
    """Patches/s of a training step for the bundle's FCN and MONAI's UNet (rows for the table)."""
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    parser = _bundle_parser(bundle)
    patch = [int(v) for v in parser.get_parsed_content("patch_size")]
    nets = {
        "fcn": lambda: parser.get_parsed_content("network_def", lazy=False),
        "unet": lambda: UNet(**{k: v for k, v in UNET_DEF.items() if k != "_target_"}),
    }
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rows = []
    for name, make in nets.items():
        for prec in precisions:
            torch.manual_seed(0)
            net = make().train()
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            x = torch.randn(batch_size, 1, *patch)
            y = torch.randint(0, 3, (batch_size, 1, *patch))
            times = []
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    out = net(x)
                loss = loss_fn(out.float(), y)
                loss.backward()
                opt.step()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            n_params = sum(p.numel() for p in net.parameters())
            rows.append(
                [
                    name,
                    prec,
                    "x".join(map(str, patch)),
                    str(batch_size),
                    f"{med:.3f}",
                    f"{batch_size / med:.2f}",
                    f"{n_params / 1e6:.2f}",
                ]
            )
            print(f"  {name} {prec}: {batch_size / med:.2f} patches/s", file=sys.stderr, flush=True)
    return rows


def _train_and_score(
    bundle: Path,
    name: str,
    *,
    epochs: int,
    data: Path,
    test_data: Path,
    workdir: Path,
    patch: tuple[int, int, int] | None,
) -> tuple[float, list[Any]]:
    """Train one network with the bundle's own training; score it on the unseen test phantoms."""
    from medfcn.bundle import copy_bundle
    from medfcn.engine.evaluation import evaluate
    from medfcn.engine.training import train

    copy = workdir / f"bundle_{name}_{epochs}"
    copy_bundle(bundle, copy)
    if patch is not None:  # training and inference alike (medfcn.bundle.set_patch_size)
        from medfcn.bundle import set_patch_size

        set_patch_size(copy, patch)
    if name == "unet":
        cfg_path = copy / "configs" / "inference.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["network_def"] = UNET_DEF
        cfg_path.write_text(json.dumps(cfg, indent=2))
    t0 = time.perf_counter()
    train(
        copy, data_dir=data, epochs=epochs, device="cpu", seed=0, tracking=False, quiet=True,
        overrides={"num_workers": 0},
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    # "all" on a dataset of other phantoms: cases that neither trained the network nor picked its checkpoint
    result = evaluate(copy, test_data, split="all", device="cpu", seed=0, progress=False)
    print(f"  {name}: trained {epochs} epochs in {train_s:.0f} s", file=sys.stderr, flush=True)
    return train_s, list(result.summary)


def budget(
    bundle: Path,
    *,
    epochs: int,
    cases: int,
    test_cases: int,
    shape: tuple[int, int, int],
    workdir: Path,
    patch: tuple[int, int, int] | None = None,
) -> tuple[list[list[str]], list[list[str]]]:
    """FCN and UNet for the same epochs, then the FCN again for the UNet's wall time; held-out Dice/HD95.

    Returns the table rows and the comparison rows (liver Dice and train time, FCN minus/over UNet).
    """
    from medfcn.data.synthetic import write_msd_dataset

    data = write_msd_dataset(workdir / "Task03_Liver", num_train=cases, num_test=0, shape=shape, seed=0)
    # Unseen phantoms (another seed), all labelled: scored with split="all"
    test_data = write_msd_dataset(workdir / "Test", num_train=test_cases, num_test=0, shape=shape, seed=1)
    kw: dict[str, Any] = {"data": data, "test_data": test_data, "workdir": workdir, "patch": patch}
    runs: list[tuple[str, str, int, float, list[Any]]] = []
    t_fcn, s_fcn = _train_and_score(bundle, "fcn", epochs=epochs, **kw)
    runs.append(("fcn", "equal epochs", epochs, t_fcn, s_fcn))
    t_unet, s_unet = _train_and_score(bundle, "unet", epochs=epochs, **kw)
    runs.append(("unet", "equal epochs", epochs, t_unet, s_unet))
    # The same wall time as the UNet: epochs scaled by the measured time per epoch (validation included)
    equal_time_epochs = max(1, round(epochs * t_unet / t_fcn))
    if equal_time_epochs != epochs:
        t_eq, s_eq = _train_and_score(bundle, "fcn", epochs=equal_time_epochs, **kw)
        runs.append(("fcn", "UNet's time", equal_time_epochs, t_eq, s_eq))
    rows = []
    for name, label, n_epochs, secs, summary in runs:
        for s in summary:
            rows.append(
                [
                    name,
                    label,
                    str(n_epochs),
                    f"{secs:.0f}",
                    s.class_name,
                    str(s.n),
                    f"{s.dice_mean:.3f} ± {s.dice_sd:.3f}",
                    f"{s.hd95_mean:.1f} ± {s.hd95_sd:.1f}",
                    str(s.n_inf),
                ]
            )

    def liver(summary: list[Any]) -> float:
        return float(next(s.dice_mean for s in summary if s.class_name == "liver"))

    cmp_rows = []
    for name, label, n_epochs, secs, summary in runs:
        if name == "fcn":
            cmp_rows.append(
                [
                    f"FCN {n_epochs} epochs ({label}) vs UNet {epochs} epochs",
                    f"{t_unet / secs:.2f}x",
                    f"{liver(summary) - liver(s_unet):+.3f}",
                ]
            )
    return rows, cmp_rows


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the requested parts, print Markdown tables."""
    import monai
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "bundles" / "liver")
    p.add_argument("--parts", nargs="+", choices=["throughput", "budget"], default=["throughput", "budget"])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=10, help="budget part: epochs for each network")
    p.add_argument("--cases", type=int, default=10, help="budget part: labelled synthetic training cases")
    p.add_argument("--test-cases", type=int, default=6, help="budget part: unseen labelled phantoms scored")
    p.add_argument("--shape", default="64x64x48", help="budget part: synthetic volume shape XxYxZ")
    p.add_argument(
        "--patch", default=None, help="budget part: patch XxYxZ for both networks (default: the bundle's)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = args.bundle.resolve()
    print(f"# bench_training {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    print(
        f"# {platform.machine()}, {os.cpu_count()} logical CPUs, threads={args.threads}, torch {torch.__version__}, "
        f"monai {monai.__version__}, bundle {bundle}"
    )
    print(
        f"# command: python benchmarks/bench_training.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    if "throughput" in args.parts:
        rows = throughput(
            bundle,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            precisions=args.precisions,
        )
        print(f"\n## Training step throughput (median of {args.steps} steps)\n")
        print(_table(["net", "precision", "patch", "batch", "s/step", "patches/s", "M params"], rows))
    if "budget" in args.parts:
        shape = tuple(int(v) for v in args.shape.split("x"))
        with tempfile.TemporaryDirectory(prefix="medfcn-bench-train-") as tmp:
            patch = tuple(int(v) for v in args.patch.split("x")) if args.patch else None
            rows, cmp_rows = budget(
                bundle, epochs=args.epochs, cases=args.cases, test_cases=args.test_cases, shape=shape,  # type: ignore[arg-type]
                workdir=Path(tmp), patch=patch,
            )  # fmt: skip
        print(
            f"\n## Training budget ({args.cases} synthetic training cases {args.shape}, scored on "
            f"{args.test_cases} unseen phantoms)\n"
        )
        print(
            _table(
                ["net", "budget", "epochs", "train s", "class", "cases", "Dice", "HD95 mm", "HD95 inf"], rows
            )
        )
        print("\n## FCN against UNet (train-time ratio >1: the FCN trained faster; liver Dice difference)\n")
        print(_table(["comparison", "UNet time / FCN time", "liver Dice FCN - UNet"], cmp_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
