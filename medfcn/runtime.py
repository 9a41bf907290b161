"""Where and in which precision a network runs: device choice, torchrun ranks, CPU bf16 units, the
autocast-dtype rule, and the per-layer precision policy for CPU bf16.

One rule for everything that autocasts (inference and training call :func:`autocast_dtype`). On the CPU,
bf16 autocast is not a uniform win: with Intel AMX (Sapphire Rapids and later) oneDNN's bf16 kernels run
most of the liver FCN's convolutions 2-4x faster than fp32, but a convolution with very few input channels
(the 1 -> 12 stem, the 3 -> 24 sub-pixel score upsampling) gets no AMX tile work to do and runs 2-4x
*slower* than in fp32 (``benchmarks/bench_bf16.py``). :func:`apply_precision_policy` keeps those layers in
fp32 under autocast, and stores the bf16 copies of the other layers' weights once: under
``torch.inference_mode()`` autocast does not cache its weight casts, so without this every call re-casts
every weight (1.2 ms for the 256 -> 256 3³ kernel, more than the convolution itself on a 3³ map).

Module-level imports are the standard library only: ``medfcn info`` and ``--help`` stay light.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medfcn.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "MAX_AMX_BF16_WEIGHT_PER_OUTPUT",
    "MIN_AMX_BF16_IN_CHANNELS",
    "NO_BF16_UNITS_NOTE",
    "AmpSetting",
    "PrecisionPlan",
    "apply_precision_policy",
    "autocast_dtype",
    "cpu_bf16_units",
    "cpu_has_bf16",
    "describe_policy",
    "is_rank0",
    "keeps_fp32",
    "layer_precisions",
    "process_group",
    "rank_and_world",
    "resolve_device",
]

logger = logging.getLogger(__name__)

AmpSetting = bool | Literal["fp16", "bf16"] | None

MIN_AMX_BF16_IN_CHANNELS = 4
"""On AMX CPUs, convolutions with fewer input or output channels than this stay fp32 under bf16 autocast.

Measured with ``benchmarks/bench_bf16.py`` on a Xeon with AMX: bf16/fp32 time 2-3x for 1 input channel
(the stem), 3 (the sub-pixel score upsampling) and 3 outputs (the 1x1 score heads), while 12 channels in
and out already run 2x faster in bf16.
Without AMX (AVX512-BF16 alone) the same layers gain 1.2-1.3x in bf16, so nothing is kept in fp32 there."""

MAX_AMX_BF16_WEIGHT_PER_OUTPUT = 32
"""On AMX CPUs, convolutions whose weight has more elements than this many times their output elements per
call stay fp32: the 256 -> 256 and 128 -> 256 convolutions on 3³ maps (2 x 96³ patches: 64-128x) run 1.5-3x
slower in bf16, the 128 -> 128 ones on 6³ maps (8x) 1.2-1.7x faster."""

_FP32_MARK = "_medfcn_precision"


# ------------------------------------------------------------------------------------------------ devices


_CPU_FALLBACK_SAID = False


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` (one GPU per torchrun rank), else ``mps``, else the CPU (with a
    one-line warning); ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` where torch has them.

    Raises:
        InputError: an unknown device, or one this machine or this torch build does not have.
    """
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        global _CPU_FALLBACK_SAID
        if not _CPU_FALLBACK_SAID:  # said once per process, not once per fold or model
            logger.warning("--device auto: no CUDA or MPS device here, running on the CPU")
            _CPU_FALLBACK_SAID = True
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} requested but CUDA is not available here; use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not _mps_available():
            raise InputError(
                f"device {device!r} requested but this torch build or machine has no MPS (Apple GPU); "
                "use --device auto (falls back to the CPU) or --device cpu"
            )
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# ------------------------------------------------------------------------------------------- torchrun ranks


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment (``RANK``, ``WORLD_SIZE``); ``(0, 1)`` outside it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    """Whether this process is torchrun's rank 0 (or runs alone): the one that writes run-level files."""
    return rank_and_world()[0] == 0


@contextlib.contextmanager
def process_group(world: int) -> Iterator[None]:
    """A gloo process group for the block when ``world`` > 1 and none exists yet (destroyed after it).

    gloo carries only Python objects (case splits, summary rows), so it works whatever the device.
    """
    created = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            from datetime import timedelta

            dist.init_process_group("gloo", timeout=timedelta(hours=12))
            created = True
    try:
        yield
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- bf16 units


def cpu_bf16_units() -> list[str]:
    """The native bf16 units of this CPU: ``"AVX512-BF16"`` and/or ``"AMX"`` (empty: none).

    AVX512-BF16 (``vdpbf16ps``) at most doubles the fp32 rate of a convolution: the liver FCN's
    convolutions gain 1.2-1.85x each and its sliding window 1.5-1.6x on the AMD benchmark CPU. AMX tiles
    (Intel Sapphire Rapids and later) run wide bf16 convolutions several times faster than fp32 and narrow
    ones slower (see :data:`MIN_AMX_BF16_IN_CHANNELS`). Without either, oneDNN emulates bf16 and autocast is
    slower than fp32.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: ask torch (private helpers of torch >= 2.3)
        import torch

        try:
            avx = bool(torch.cpu._is_avx512_bf16_supported())
            amx = bool(torch.cpu._is_amx_tile_supported())
        except AttributeError:
            return []
    else:
        avx, amx = "avx512_bf16" in flags, "amx_bf16" in flags or "amx_tile" in flags
    return [name for name, present in (("AVX512-BF16", avx), ("AMX", amx)) if present]


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 units (AVX512-BF16 or AMX), where CPU bf16 autocast pays."""
    return bool(cpu_bf16_units())


# -------------------------------------------------------------------------------------- autocast dtype


_NO_BF16_UNITS_SAID = False

NO_BF16_UNITS_NOTE = (
    "this CPU has no bf16 units (AVX512-BF16 or AMX): bf16 would be emulated, 13-45x slower than fp32 "
    "(measured on an AVX2-only AMD EPYC)"
)
"""Why ``--amp`` runs fp32 on a CPU without bf16 units (:func:`autocast_dtype`)."""


def autocast_dtype(
    device: torch.device | str, amp: AmpSetting, amp_dtype: str = "auto", units: list[str] | None = None
) -> torch.dtype | None:
    """The autocast dtype for ``device``, or ``None`` for fp32: the one rule of inference and training.

    On a CPU without bf16 units (neither AVX512-BF16 nor AMX) torch runs bf16 convolutions on a slow
    reference path: a 3D convolution took 45x and a training step of the hippocampus FCN 13x longer than
    in fp32 on an AVX2-only AMD EPYC. There ``amp=True`` with ``amp_dtype="auto"`` means fp32 (said once
    per process); an explicit ``"bf16"`` still forces bf16.

    Args:
        device: where the network runs.
        amp: ``None`` = on for CUDA, off elsewhere; ``False`` = fp32; ``True`` = on with ``amp_dtype``
            (on the CPU: bf16 where it has bf16 units, else fp32); ``"fp16"``/``"bf16"`` force a dtype.
        amp_dtype: ``auto`` (bf16 on CPUs with bf16 units and on GPUs that support it, fp16 on older GPUs
            and on MPS), ``fp16`` (CUDA/MPS only; CUDA training needs a GradScaler) or ``bf16`` (forced).
        units: the CPU's bf16 units (default :func:`cpu_bf16_units`; tests pass others).

    Raises:
        InputError: fp16 on a CPU, or an unknown ``amp_dtype``.
    """
    import torch

    dev = torch.device(device)
    if amp is None:
        amp = dev.type == "cuda"
    if amp is False:
        return None
    if amp in ("fp16", "bf16"):
        amp_dtype = str(amp)
    if amp_dtype not in ("auto", "fp16", "bf16"):
        raise InputError(f"amp_dtype must be auto, fp16 or bf16, got {amp_dtype!r}")
    if amp_dtype == "fp16":
        if dev.type not in ("cuda", "mps"):
            raise InputError("fp16 autocast needs a CUDA (or MPS) device; use bf16 (or amp=True) on the CPU")
        return torch.float16
    if amp_dtype == "bf16":
        return torch.bfloat16
    if dev.type == "cpu":
        if not (cpu_bf16_units() if units is None else units):
            global _NO_BF16_UNITS_SAID
            if not _NO_BF16_UNITS_SAID:
                logger.warning("--amp: %s; running in fp32 (an explicit bf16 dtype forces bf16)", NO_BF16_UNITS_NOTE)
                _NO_BF16_UNITS_SAID = True
            return None
        return torch.bfloat16
    if dev.type == "mps":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ------------------------------------------------------------------------------ per-layer precision


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision chosen for a network: what ``medfcn info`` and ``run.json`` report.

    Attributes:
        dtype: the autocast dtype (``"bfloat16"``, ``"float16"``) or ``"float32"`` (no autocast).
        rule: why, in one line.
        fp32_layers: qualified names of the layers kept in fp32 under autocast.
        low_layers: how many convolutions run in ``dtype``.
    """

    dtype: str
    rule: str
    fp32_layers: tuple[str, ...] = field(default_factory=tuple)
    low_layers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "rule": self.rule,
            "fp32_layers": list(self.fp32_layers),
            "low_precision_layers": self.low_layers,
        }


def _conv_in_channels(module: nn.Module) -> int | None:
    """Input channels per group of a convolution (also :class:`~medfcn.networks.fcn.ScoreUpsample`)."""
    from torch import nn

    from medfcn.networks.fcn import ScoreUpsample

    if isinstance(module, ScoreUpsample):  # computes a stride-1 sub-pixel conv of its own weight
        return int(module.conv.weight.shape[0])
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return int(module.in_channels // module.groups)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.in_channels)
    return None


def _layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolutions of ``net`` by qualified name; a ScoreUpsample counts as one (its ``.conv`` only
    holds the weight of the sub-pixel convolution it computes)."""
    from torch import nn

    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for qual, module in net.named_modules():
        if any(qual.startswith(p + ".") for p in inside) or _conv_in_channels(module) is None:
            continue
        if not isinstance(module, nn.modules.conv._ConvNd):
            inside.append(qual)
        out.append((qual, module))
    return out


def _weight_elements(module: nn.Module) -> int:
    """Elements of the layer's weight (a ScoreUpsample's lives in its ``.conv``)."""
    owner = getattr(module, "conv", module) if hasattr(module, "subpixel_weight") else module
    weight = getattr(owner, "weight", None)
    return int(weight.numel()) if weight is not None else 0


def keeps_fp32(module: nn.Module, units: list[str], output_elements: int | None = None) -> bool:
    """Whether the policy keeps ``module`` in fp32 under CPU bf16 autocast.

    On AMX CPUs: a convolution with fewer than :data:`MIN_AMX_BF16_IN_CHANNELS` input or output channels
    (the stem, the 1x1 score heads, the sub-pixel score upsampling), or one
    whose weight has more than :data:`MAX_AMX_BF16_WEIGHT_PER_OUTPUT` times as many elements as its output
    per call (``output_elements``; the deepest 3³ stages: oneDNN re-lays the weight out for AMX on every
    call, which costs more than the little arithmetic). Without AMX: none (each layer gains in bf16).
    """
    cin = _conv_in_channels(module)
    if cin is None or "AMX" not in units:
        return False
    cout = getattr(module, "out_channels", cin)
    if min(cin, cout) < MIN_AMX_BF16_IN_CHANNELS:
        return True
    if not output_elements:
        return False
    return _weight_elements(module) > MAX_AMX_BF16_WEIGHT_PER_OUTPUT * output_elements


def _fp32_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``forward`` of a layer kept in fp32: autocast off, floating inputs as float32, output in float32
    (the next convolution's autocast casts it; the network's last layer hands back fp32 logits)."""
    import torch

    args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast("cpu", enabled=False):
        return type(self).forward(self, *args, **kwargs)


def _output_elements(
    net: nn.Module, layers: list[tuple[str, nn.Module]], shape: tuple[int, ...]
) -> dict[str, int]:
    """Output elements per call of each layer for an input of ``shape``, from a forward on the meta device
    (shapes only, no arithmetic, the network itself untouched)."""
    import torch

    wanted = {q for q, _ in layers}
    meta = copy.deepcopy(net).to("meta")  # the same qualified names as the original
    sizes: dict[str, int] = {}
    hooks = []
    for qual, module in meta.named_modules():
        if qual not in wanted:
            continue

        def hook(mod: nn.Module, args: Any, out: Any, name: str = qual) -> None:
            sizes[name] = int(out.numel())

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(shape, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
        logger.debug("shape probe of the precision policy failed (%s): channel rule only", err)
        sizes = {}
    finally:
        for h in hooks:
            h.remove()
    return sizes


def apply_precision_policy(
    net: nn.Module,
    dtype: torch.dtype | None,
    device: torch.device | str,
    units: list[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
    amp_requested: bool = False,
) -> PrecisionPlan:
    """Choose the precision of every convolution of ``net`` for autocast to ``dtype`` on ``device``.

    On the CPU with bf16 autocast: each convolution :func:`keeps_fp32` says so runs in fp32 with autocast
    disabled (its ``forward`` is wrapped on the instance; weights, state dict and module types unchanged),
    and the weights of every other convolution are stored in bf16 once, the values autocast would compute
    on each call. Elsewhere (fp32, CUDA, MPS) nothing changes. The network must then be called under the
    same autocast (as :class:`~medfcn.engine.inference.Segmenter` does): its bf16 convolutions no longer
    take fp32 input outside it. Applying it again first undoes the previous choice.

    Args:
        net: the network (an ``nn.Module``; a TorchScript module is left as it is).
        dtype: the autocast dtype (:func:`autocast_dtype`), ``None`` for fp32.
        device: where it runs.
        units: the CPU's bf16 units (default :func:`cpu_bf16_units`; tests pass others).
        input_shape: ``(batch, channels, *roi)`` of one network call (the sliding window's); enables the
            weight-bound rule of :func:`keeps_fp32`.
        amp_requested: autocast was asked for (``--amp``) and :func:`autocast_dtype` chose fp32 (a CPU
            without bf16 units): the plan's rule says so.

    Returns:
        The :class:`PrecisionPlan`.
    """
    import torch

    name = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    if dtype is None:
        if amp_requested and torch.device(device).type == "cpu":
            return PrecisionPlan(name, f"--amp asked, but {NO_BF16_UNITS_NOTE}: every layer in fp32")
        return PrecisionPlan(name, "no autocast: every layer in fp32")
    if (
        torch.device(device).type != "cpu"
        or dtype != torch.bfloat16
        or isinstance(net, torch.jit.ScriptModule)
    ):
        return PrecisionPlan(name, f"autocast {name}: every convolution in {name}")
    units = cpu_bf16_units() if units is None else units
    layers = _layers(net)
    for _, module in layers:  # undo a previous plan first (the shape probe copies the network)
        if module.__dict__.pop(_FP32_MARK, None):
            del module.forward
        module.float()
    sizes = _output_elements(net, layers, tuple(input_shape)) if input_shape and "AMX" in units else {}
    kept: list[str] = []
    for qual, module in layers:
        if keeps_fp32(module, units, sizes.get(qual)):
            module.forward = types.MethodType(_fp32_forward, module)
            module.__dict__[_FP32_MARK] = "fp32"
            kept.append(qual)
        else:
            for p in module.parameters():
                p.data = p.data.to(torch.bfloat16)
    if kept:
        rule = (
            f"CPU bf16 with {' and '.join(units)}: in fp32 the convolutions with < {MIN_AMX_BF16_IN_CHANNELS} "
            f"input or output channels"
            + (f" or > {MAX_AMX_BF16_WEIGHT_PER_OUTPUT}x more weights than outputs" if sizes else "")
            + " (slower in bf16 on AMX), the rest in bf16"
        )
    else:
        what = " and ".join(units) if units else "no bf16 units (emulated: slower than fp32)"
        rule = f"CPU bf16 with {what}: every convolution in bf16"
    return PrecisionPlan(name, rule, tuple(kept), len(layers) - len(kept))


def describe_policy(units: list[str] | None = None) -> str:
    """One line for ``medfcn info``: what ``--amp`` runs in on this CPU (:func:`apply_precision_policy`)."""
    units = cpu_bf16_units() if units is None else units
    if "AMX" in units:
        return (
            f"--amp: bf16, except convolutions with < {MIN_AMX_BF16_IN_CHANNELS} channels in or out or "
            f"> {MAX_AMX_BF16_WEIGHT_PER_OUTPUT}x more weights than outputs (fp32: slower in bf16 on AMX)"
        )
    if units:
        return "--amp: every convolution in bf16 (each gains on AVX512-BF16)"
    return "--amp: fp32 on this CPU (no bf16 units: emulated bf16 is 13-45x slower)"


def layer_precisions(net: nn.Module) -> dict[str, str]:
    """The precision each convolution of ``net`` runs in under autocast, by qualified name (``fp32`` for the
    layers :func:`apply_precision_policy` kept, else the dtype of its weight, ``autocast`` for fp32 weights
    that autocast casts on each call)."""
    import torch

    out: dict[str, str] = {}
    for qual, module in _layers(net):
        if module.__dict__.get(_FP32_MARK):
            out[qual] = "fp32"
            continue
        weights = [p for p in module.parameters()]
        dt = weights[0].dtype if weights else torch.float32
        out[qual] = "autocast" if dt == torch.float32 else str(dt).removeprefix("torch.")
    return out
