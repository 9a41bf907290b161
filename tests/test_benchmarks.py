"""The benchmark scripts run end to end on tiny inputs and print their tables (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medfcn.runtime import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.xdist_group("benchmarks")
def test_bench_inference_prints_ratio_and_target_tables_without_trained_weights() -> None:
    # bf16 where the CPU has bf16 units; without them torch emulates it on a reference path (a 96³ window of
    # the liver FCN: minutes), and the fp32 tables are what this checks there
    precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    out = _run(
        "benchmarks/bench_inference.py", "--sizes", "40x36x24", "--repeats", "1", "--threads", "1",
        "--modes", "net", "--precisions", *precisions, "--no-infer-cli", "--no-stages",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 40x36x24")]
    # 2 nets x each precision, every one measured (no "error" cell)
    measured = [r for r in rows if "| net " in r and ("| fcn " in r or "| unet " in r)]
    assert len(measured) == 2 * len(precisions) and not any("error" in r for r in measured), out
    assert "UNet / FCN time, fp32" in out
    assert ("fcn: fp32 / bf16 time" in out) == ("bf16" in precisions)
    assert "## Targets (issues 7 and 15" in out
    assert "## Stages" not in out  # --no-stages: the 512x512x300 stage table takes minutes
    assert "## Whole `medfcn infer`" not in out  # --no-infer-cli
    assert out.count("FCN >= 1.5x faster than UNet") == len(precisions)
    if not (REPO / "bundles" / "liver" / "models" / "model.pt").exists():
        assert "seeded random weights" in out


@pytest.mark.xdist_group("benchmarks")
def test_bench_training_throughput_table() -> None:
    out = _run(
        "benchmarks/bench_training.py", "--parts", "throughput", "--steps", "1", "--warmup", "0",
        "--precisions", "fp32", "--threads", "1",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith(("| fcn ", "| unet "))]
    assert len(rows) == 2
    for row in rows:
        patches_per_s = float(row.split("|")[6])
        assert patches_per_s > 0


@pytest.mark.xdist_group("benchmarks")
def test_bench_bf16_times_every_convolution_of_the_bundle_network() -> None:
    out = _run(
        "benchmarks/bench_bf16.py", "--patch", "40x40x40", "--batch", "1", "--repeats", "1",
        "--warmup", "0", "--threads", "1",
    )  # fmt: skip
    layers = [line for line in out.splitlines() if line.startswith(("| encoder.", "| decoder."))]
    # bundle 0.2.x: 21 encoder convolutions (with residual paths), 4 fusion steps x (mix, head), the
    # deepest score head, 5 sub-pixel upsamplings
    assert len(layers) == 21 + 8 + 1 + 5, out
    assert sum("sub-pixel conv 3->24" in line for line in layers) == 5
    for line in layers:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[5].endswith("x")
        assert cells[6] in (("fp32", "bf16") if cpu_has_bf16() else ("fp32",))  # what --amp runs here
    assert "whole network, plain autocast" in out and "whole network, medfcn policy" in out
    assert "amx_bf16" in out
    if cpu_has_bf16():
        assert "policy: CPU bf16" in out
    else:  # --amp runs fp32 on a CPU without bf16 units
        assert "policy: --amp asked, but this CPU has no bf16 units" in out


def test_bench_hippocampus_table_reads_the_committed_fold_results() -> None:
    import json

    out = _run("benchmarks/bench_hippocampus.py", "--table")
    fold0 = json.loads((REPO / "benchmarks" / "results" / "hippocampus" / "fcn" / "fold_0.json").read_text())
    row = next(line for line in out.splitlines() if line.startswith("| fcn | 0 |"))
    assert f"{fold0['classes']['anterior']['dice_mean']:.4f}" in row
    assert "| unet | 0 |" in out and "mean of" in out


@pytest.mark.xdist_group("benchmarks")
def test_bench_case_times_and_weighs_every_stage_of_one_infer() -> None:
    out = _run("benchmarks/bench_case.py", "--size", "48x40x24", "--threads", "1")
    assert out.count("| **whole medfcn infer (until the command returns)** |") == 1
    for label in ("start-up", "between stages"):  # timed from the interpreter's start and around the stages
        assert re.search(rf"\| {label} \| [0-9.]+ \|", out), (label, out)
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in out.splitlines())
        if len(cells) == 3 and cells[0] not in ("stage", "---")
    }
    for stage in ("load", "preprocessing", "sliding window (network)", "invert to the source grid", "argmax",
                  "statistics", "NIfTI + preview (output thread)"):  # fmt: skip
        assert float(rows[stage][0]) >= 0, (stage, out)  # timed (a tiny case rounds some stages to 0.00)
    net = rows["sliding window (network)"]
    assert float(net[0]) > 0 and float(net[1]) > 0.1  # seconds, and the peak RSS (GiB) sampled meanwhile
    whole = rows["**whole medfcn infer (until the command returns)**"]
    assert float(whole[0].strip("*")) > float(rows["sliding window (network)"][0])
    assert 0.2 < float(whole[1].split()[0].strip("*")) < 24  # VmHWM in GiB
    # the parent times the whole process, the interpreter's start and exit included, and divides by the network
    found = re.search(r"whole process, spawn to exit: ([0-9.]+) s; whole / network: ([0-9.]+)x \(target <= 2.5x\)", out)
    assert found, out
    process, ratio = float(found.group(1)), float(found.group(2))
    assert process > float(whole[0].strip("*"))
    network = re.search(r"network: ([0-9.]+) s; peak", out)
    assert network and float(network.group(1)) == pytest.approx(float(net[0]), abs=0.006)
    assert ratio == pytest.approx(process / float(network.group(1)), rel=0.05, abs=0.01)  # printed rounded


def test_bench_case_prints_the_median_ratio_of_several_runs() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from bench_case import median_line
    finally:
        sys.path.pop(0)
    assert median_line([2.9, 2.41, 2.6]) == "whole / network over 3 runs: median 2.60x (2.90x, 2.41x, 2.60x)"
    assert "median 2.50x" in median_line([2.4, 2.6])
