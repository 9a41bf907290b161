"""medfcn.runtime: device choice, the autocast-dtype rule and the per-layer CPU bf16 precision policy."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from medfcn.errors import InputError
from medfcn.networks import FCN
from medfcn.runtime import (
    apply_precision_policy,
    autocast_dtype,
    layer_precisions,
    resolve_device,
)

AMX = ["AVX512-BF16", "AMX"]


def _liver_like() -> FCN:
    """The liver bundle's network shape (12-channel stem, concat fusion), small enough for a test."""
    torch.manual_seed(0)
    return FCN(3, 1, 3, channels=(12, 32, 64, 128, 256), blocks=(1, 1, 2, 2, 2), fusion="concat").eval()


def test_amx_policy_keeps_the_narrow_and_weight_bound_layers_in_fp32() -> None:
    net = _liver_like()
    keys = set(net.state_dict())
    plan = apply_precision_policy(net, torch.bfloat16, "cpu", units=AMX, input_shape=(2, 1, 96, 96, 96))
    chosen = layer_precisions(net)
    fp32 = {k for k, v in chosen.items() if v == "fp32"}
    assert set(plan.fp32_layers) == fp32
    # 1 input channel (stem and its residual), 3 channels (sub-pixel upsamplings, 1x1 score heads)
    assert {"encoder.stages.0.0.conv.unit0.conv", "encoder.stages.0.0.residual", "decoder.final"} <= fp32
    assert {f"decoder.steps.{i}.up" for i in range(4)} <= fp32
    assert {f"decoder.steps.{i}.head" for i in range(4)} | {"decoder.score"} <= fp32
    # weight-bound on the 3³ maps of a 96³ patch: the deepest stage
    assert {"encoder.stages.4.0.conv.unit0.conv", "encoder.stages.4.1.conv.unit1.conv"} <= fp32
    assert not any(k.startswith("decoder.final.") for k in chosen)  # a ScoreUpsample is one layer
    # everything else has its weights stored in bf16 once
    assert chosen["encoder.stages.0.0.conv.unit1.conv"] == "bfloat16"
    assert chosen["decoder.steps.3.mix.conv"] == "bfloat16"
    assert net.encoder.stages[1][0].conv.unit0.conv.weight.dtype == torch.bfloat16
    assert net.encoder.stages[0][0].residual.weight.dtype == torch.float32
    assert plan.low_layers == len(chosen) - len(fp32) and plan.low_layers > 15
    assert set(net.state_dict()) == keys  # same names: checkpoints and exports are unaffected
    assert plan.as_dict()["fp32_layers"] == list(plan.fp32_layers) and "AMX" in plan.rule


def test_without_amx_or_without_a_shape_the_policy_keeps_fewer_layers() -> None:
    net = _liver_like()
    plan = apply_precision_policy(net, torch.bfloat16, "cpu", units=["AVX512-BF16"])
    assert plan.fp32_layers == () and set(layer_precisions(net).values()) == {"bfloat16"}
    plan = apply_precision_policy(net, torch.bfloat16, "cpu", units=AMX)  # again: undoes the first one
    assert "encoder.stages.4.0.conv.unit0.conv" not in plan.fp32_layers  # no input shape: channel rule only
    assert "encoder.stages.0.0.residual" in plan.fp32_layers


def test_policy_outputs_stay_close_to_fp32_and_fp32_or_cuda_plans_change_nothing() -> None:
    net = _liver_like()
    x = torch.randn(1, 1, 37, 41, 29, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(x)
    untouched = copy.deepcopy(net)
    assert apply_precision_policy(untouched, None, "cpu").fp32_layers == ()
    assert apply_precision_policy(untouched, torch.bfloat16, "cuda").dtype == "bfloat16"
    assert set(layer_precisions(untouched).values()) == {"autocast"}
    for units in (AMX, ["AVX512-BF16"]):
        policy = copy.deepcopy(net)
        apply_precision_policy(policy, torch.bfloat16, "cpu", units=units, input_shape=(1, 1, 37, 41, 29))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = policy(x)
        assert out.shape == ref.shape
        err = (out.float() - ref).abs().max().item()
        assert err < 0.05 * ref.abs().max().item(), (units, err)
        # the labels of a bf16 network agree with fp32 almost everywhere
        assert (out.float().argmax(1) == ref.argmax(1)).float().mean() > 0.98


def test_fp32_layers_run_with_autocast_off() -> None:
    net = _liver_like()
    apply_precision_policy(net, torch.bfloat16, "cpu", units=AMX)
    seen: dict[str, torch.dtype] = {}
    stem = net.encoder.stages[0][0].conv.unit0.conv
    body = net.encoder.stages[0][0].conv.unit1.conv
    stem.register_forward_hook(lambda m, a, out: seen.__setitem__("stem", out.dtype))
    body.register_forward_hook(lambda m, a, out: seen.__setitem__("body", out.dtype))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randn(1, 1, 40, 40, 40))
    assert seen == {"stem": torch.float32, "body": torch.bfloat16}


def test_autocast_dtype_is_one_rule() -> None:
    assert autocast_dtype("cpu", None) is None  # off on the CPU by default
    assert autocast_dtype("cpu", False) is None
    assert autocast_dtype("cpu", True, units=AMX) == torch.bfloat16
    assert autocast_dtype("cpu", True, units=["AVX512-BF16"]) == torch.bfloat16
    assert autocast_dtype("cpu", "bf16", units=[]) == torch.bfloat16  # forced
    assert autocast_dtype("mps", True) == torch.float16
    with pytest.raises(InputError, match="fp16"):
        autocast_dtype("cpu", "fp16")
    with pytest.raises(InputError, match="amp_dtype"):
        autocast_dtype("cpu", True, "int8")


def test_amp_on_a_cpu_without_bf16_units_runs_fp32_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import medfcn.runtime as runtime

    monkeypatch.setattr(runtime, "_NO_BF16_UNITS_SAID", False)
    with caplog.at_level(logging.WARNING, logger="medfcn.runtime"):
        assert autocast_dtype("cpu", True, units=[]) is None
        assert autocast_dtype("cpu", True, "auto", units=[]) is None
    said = [r.getMessage() for r in caplog.records if "no bf16 units" in r.getMessage()]
    assert len(said) == 1 and "running in fp32" in said[0]
    plan = apply_precision_policy(_liver_like(), None, "cpu", amp_requested=True)
    assert plan.dtype == "float32" and "no bf16 units" in plan.rule and plan.fp32_layers == ()
    assert "no bf16 units" not in apply_precision_policy(_liver_like(), None, "cpu").rule
    assert "fp32 on this CPU" in runtime.describe_policy([])


def test_device_mps_is_accepted_where_torch_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import medfcn.runtime as runtime

    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(InputError, match=r"no MPS.*--device auto"):
        resolve_device("mps")
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(InputError, match="auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")


def test_device_auto_falls_back_to_the_cpu_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import medfcn.runtime as runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    monkeypatch.setattr(runtime, "_CPU_FALLBACK_SAID", False)
    with caplog.at_level(logging.WARNING, logger="medfcn.runtime"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("auto") == torch.device("cpu")  # five folds evaluated: still one line
    lines = [r.getMessage() for r in caplog.records if r.name == "medfcn.runtime"]
    assert len(lines) == 1 and "running on the CPU" in lines[0] and "\n" not in lines[0]
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_torchrun_rank_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    from medfcn.runtime import is_rank0, process_group, rank_and_world

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1) and is_rank0()
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world() == (2, 4) and not is_rank0()
    with process_group(1):  # one process: no group is made
        import torch.distributed as dist

        assert not dist.is_initialized()
