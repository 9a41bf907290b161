"""The training and validation engines: MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` with autocast
on any device (CUDA fp16 with ``torch.amp.GradScaler("cuda")``, CUDA/CPU bf16) and gradient clipping after
unscaling. MONAI's engines autocast on CUDA only and do not clip.

The autocast dtype follows :func:`medfcn.runtime.autocast_dtype`, the rule inference uses too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys

from medfcn.runtime import autocast_dtype

__all__ = ["FCNEvaluator", "FCNTrainer"]

logger = logging.getLogger(__name__)


def _begin_iteration(engine: Any, batchdata: Any) -> tuple[Any, Any, tuple, dict]:
    """Move a batch to the engine's device and start its output: ``(inputs, targets, args, kwargs)``."""
    if batchdata is None:
        raise ValueError("Must provide batch data for current iteration.")
    batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
    inputs, targets = batch[0], batch[1]
    args, kwargs = (batch[2], batch[3]) if len(batch) > 2 else ((), {})
    engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
    return inputs, targets, args, kwargs


def _autocast(engine: Any, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on the engine's device type; fp32 (disabled) for ``None``."""
    return torch.autocast(torch.device(engine.state.device).type, dtype=dtype, enabled=dtype is not None)


class FCNTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` with device-agnostic autocast and gradient clipping.

    Args:
        amp: autocast the forward pass and the loss (see :func:`medfcn.runtime.autocast_dtype`).
        amp_dtype: ``auto``, ``fp16`` (CUDA only, with ``torch.amp.GradScaler("cuda")``) or ``bf16``.
        grad_clip_norm: clip the global gradient norm to this value after unscaling (``None``/0: no clipping).
        *args, **kwargs: as ``SupervisedTrainer`` (``amp``-related MONAI arguments are not used).

    The GradScaler, when there is one, is ``self.scaler`` and is saved by
    :class:`~medfcn.engine.training.handlers.ResumableCheckpoint`.
    """

    def __init__(
        self, *args: Any, amp: bool = False, amp_dtype: str = "auto", grad_clip_norm: float | None = None, **kwargs: Any
    ) -> None:
        kwargs.pop("amp_kwargs", None)
        kwargs["amp"] = False  # MONAI's amp means CUDA autocast + its own scaler; this class does both
        super().__init__(*args, **kwargs)
        self.amp = bool(amp)
        self.autocast_dtype = autocast_dtype(self.state.device, self.amp, amp_dtype)
        self.grad_clip_norm = float(grad_clip_norm) if grad_clip_norm else None
        self.scaler: torch.amp.GradScaler | None = self._new_scaler()  # type: ignore[assignment]
        self.skipped_steps = 0

    def _new_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    def run(self) -> None:  # type: ignore[override]
        # MONAI's Trainer.run makes a torch.cuda.amp.GradScaler whenever amp is on, on CPUs too; a resumed
        # run loads this scaler's state on STARTED, after it is created here.
        self.scaler = self._new_scaler()  # type: ignore[assignment]
        Workflow.run(self)

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        inputs, targets, args, kwargs = _begin_iteration(engine, batchdata)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with _autocast(engine, self.autocast_dtype):
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        # The loss in fp32: softmax and Dice sums over a 96^3 patch lose too much in half precision.
        loss = engine.loss_function(pred.float(), targets).mean()
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.grad_clip_norm:
                self.scaler.unscale_(engine.optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip_norm)
            self.scaler.step(engine.optimizer)  # skipped (and the scale lowered) if gradients are not finite
            self.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            # Without a scaler nothing guards the weights against a non-finite gradient (a diverging loss,
            # or a rare bad bf16 kernel on some CPUs, seen with torch 2.13): skip that step, as GradScaler
            # does for fp16, instead of writing NaN into every weight.
            norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip_norm or float("inf"))
            if torch.isfinite(norm):
                engine.optimizer.step()
            else:
                self.skipped_steps += 1
                logger.warning(
                    "iteration %d: non-finite gradient norm, optimiser step skipped (%d so far)",
                    engine.state.iteration,
                    self.skipped_steps,
                )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class FCNEvaluator(SupervisedEvaluator):
    """MONAI ``SupervisedEvaluator`` with autocast on any device (see :func:`medfcn.runtime.autocast_dtype`)."""

    def __init__(self, *args: Any, amp: bool = False, amp_dtype: str = "auto", **kwargs: Any) -> None:
        kwargs.pop("amp_kwargs", None)
        kwargs["amp"] = False
        super().__init__(*args, **kwargs)
        self.amp = bool(amp)
        self.autocast_dtype = autocast_dtype(self.state.device, self.amp, amp_dtype)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        inputs, _, args, kwargs = _begin_iteration(engine, batchdata)
        with engine.mode(engine.network), _autocast(engine, self.autocast_dtype):
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
        engine.state.output[Keys.PRED] = pred.float() if self.autocast_dtype is not None else pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


