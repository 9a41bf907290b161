"""The console view of a training: a progress bar per epoch and one line per validation (what ``medfcn
train`` shows; not part of the bundle recipe, so ``python -m monai.bundle run`` does without it)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from medfcn.engine.training.handlers import is_rank0, loss_of

__all__ = ["TrainingProgress"]

logger = logging.getLogger(__name__)


class TrainingProgress:
    """A tqdm bar per epoch and one line per validation (the CLI's view; not part of the bundle recipe)."""

    def __init__(self, evaluator: Engine | None, class_names: Sequence[str], quiet: bool) -> None:
        self.evaluator, self.class_names, self.quiet = evaluator, list(class_names), quiet
        self.bar: Any = None
        self._loss: list[float] = []
        self._t_val = 0.0

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        if not self.quiet:
            trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
            trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.STARTED, self._val_started)
            self.evaluator.add_event_handler(Events.COMPLETED, self._val_completed)

    def _epoch_started(self, engine: Engine) -> None:
        from medfcn._progress import progress

        self._loss = []
        self.bar = progress(  # without a terminal: one line per epoch
            total=engine.state.epoch_length,
            desc=f"epoch {engine.state.epoch}/{engine.state.max_epochs}",
            unit="batch",
            leave=False,
            lines="end",
        )

    def _iteration(self, engine: Engine) -> None:
        with contextlib.suppress(KeyError, TypeError, IndexError):
            self._loss.append(loss_of(engine.state.output))
        if self.bar is not None:
            self.bar.update(1)
            if self._loss:
                self.bar.set_postfix_str(f"loss {np.mean(self._loss):.4f}")

    def _epoch_completed(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _val_started(self, engine: Engine) -> None:
        self._t_val = time.perf_counter()

    def _val_completed(self, evaluator: Engine) -> None:
        m = evaluator.state.metrics
        parts = [f"epoch {self.trainer.state.epoch}/{self.trainer.state.max_epochs}"]
        if self._loss:
            parts.append(f"loss {np.mean(self._loss):.4f}")
        dice = [f"{name} {float(m[f'val_{name}_dice']):.3f}" for name in self.class_names if f"val_{name}_dice" in m]
        if "val_mean_dice" in m:
            dice.append(f"mean {float(m['val_mean_dice']):.3f}")
        if dice:
            parts.append("dice " + " ".join(dice))
        best = getattr(evaluator.state, "best_metric", None)
        if best is not None and best > -1:
            parts.append(f"best {best:.3f} @ {evaluator.state.best_metric_epoch}")  # type: ignore[attr-defined]
        parts.append(f"({time.perf_counter() - self._t_val:.1f} s)")
        message = ", ".join(parts)
        logger.info(message)
        if not self.quiet and is_rank0():
            from tqdm.auto import tqdm

            tqdm.write(message)


