"""The training handlers MONAI lacks, each referenced by ``_target_`` from a bundle's ``train.json``:

* :class:`PeriodicValidation`: MONAI's ``ValidationHandler`` that also validates after the last epoch.
* :class:`ResumableCheckpoint`: ``last.pt`` after every epoch (model, optimiser, scheduler, trainer state,
  GradScaler, best metric and its tracking list, RNG states), written atomically; with ``resume`` it is
  loaded by MONAI's ``CheckpointLoader`` before the first epoch.
* :class:`TimeBudget`: fits a training into a wall-clock budget (epochs and learning-rate schedule re-planned).
* :class:`MetricsWriter`: ``metrics.json`` (history, best epoch, per-class Dice) after every validation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, ValidationHandler
from monai.utils.enums import CommonKeys as Keys

from medfcn._io import atomic_write, atomic_write_json
from medfcn.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from monai.handlers import CheckpointSaver

__all__ = [
    "MetricsWriter",
    "PeriodicValidation",
    "ResumableCheckpoint",
    "TimeBudget",
    "is_rank0",
    "loss_of",
]

logger = logging.getLogger(__name__)


class PeriodicValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` run every ``interval`` epochs **and** after the last epoch, so every
    training ends with a validated (and saved) best model whatever the epoch count."""

    def attach(self, engine: Engine) -> None:
        if self.validator is None:
            self.validator = engine  # type: ignore[assignment]  # MONAI allows a late validator
        interval = max(1, int(self.interval))

        def due(eng: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == eng.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def loss_of(output: Any) -> float:
    """The loss of a trainer iteration's output (a dict, or a list of dicts once decollated)."""
    item = output[0] if isinstance(output, (list, tuple)) else output
    return float(item[Keys.LOSS])


def is_rank0() -> bool:
    """Whether this process writes the run's files: rank 0 of a process group, or the only process."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


class _RunState:
    """What a resumed run needs beyond the model/optimiser/scheduler/trainer ``state_dict``s."""

    def __init__(self, trainer: Engine, evaluator: Engine | None, best_checkpoint: CheckpointSaver | None) -> None:
        self.trainer, self.evaluator, self.best_checkpoint = trainer, evaluator, best_checkpoint

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "rng": {
                "python": random.getstate(),
                # plain lists: checkpoints are read back with torch.load(weights_only=True)
                "numpy": _numpy_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        }
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)  # type: ignore[attr-defined]
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)  # type: ignore[attr-defined]
        tracker = getattr(self.best_checkpoint, "_key_metric_checkpoint", None)
        if tracker is not None:
            state["best_checkpoint"] = tracker.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rng = state.get("rng", {})
        if "python" in rng:
            random.setstate(rng["python"])
        if "numpy" in rng:
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "torch" in rng:
            torch.set_rng_state(torch.as_tensor(rng["torch"], dtype=torch.uint8).cpu())
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in rng["cuda"]])
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]  # type: ignore[attr-defined]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]  # type: ignore[attr-defined]
        tracker = getattr(self.best_checkpoint, "_key_metric_checkpoint", None)
        if tracker is not None and "best_checkpoint" in state:
            # The best-model saver compares new scores with this list: without it, the first validation
            # after a resume would overwrite a better model.pt.
            tracker.load_state_dict(state["best_checkpoint"])


class ResumableCheckpoint:
    """Write ``last.pt`` after every epoch and, with ``resume``, load it before the first one.

    ``last.pt`` holds ``save_dict``'s ``state_dict``s (model, optimizer, lr_scheduler), the trainer's state
    (epoch, iteration) and a ``state`` entry: GradScaler, the evaluator's best metric and epoch, the
    best-model saver's tracking list, and the Python/NumPy/torch/CUDA RNG states. Only rank 0 writes.

    Args:
        path: the checkpoint file (``<output>/checkpoints/last.pt``).
        save_dict: objects with ``state_dict`` (the trainer itself is added on ``attach``).
        evaluator: the validation engine whose best metric is kept.
        best_checkpoint: the ``CheckpointSaver`` that keeps the best model (its tracking list is kept).
        resume: load ``path`` when training starts.
        map_location: where loaded tensors go.

    Raises:
        InputError: on ``attach`` with ``resume`` when ``path`` does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        save_dict: Mapping[str, Any],
        evaluator: Engine | None = None,
        best_checkpoint: CheckpointSaver | None = None,
        resume: bool = False,
        map_location: Any = None,
    ) -> None:
        self.path = Path(path)
        # Unwrap DDP/DataParallel: last.pt then holds plain keys and resumes with or without torchrun.
        self.save_dict = {k: getattr(v, "module", v) for k, v in save_dict.items()}
        self.evaluator = evaluator
        self.best_checkpoint = best_checkpoint
        self.resume = bool(resume)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine, "state": _RunState(engine, self.evaluator, self.best_checkpoint)}
        self._objects = objects
        if self.resume:
            if not self.path.is_file():
                raise InputError(f"nothing to resume: {self.path} does not exist (train without --resume first)")
            # MONAI's loader restores the trainer state on STARTED, so the epoch loop continues from there.
            CheckpointLoader(str(self.path), load_dict=objects, map_location=self.map_location).attach(engine)
            engine.add_event_handler(Events.STARTED, self._extend_schedule)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _extend_schedule(self, engine: Engine) -> None:
        """A run resumed to more epochs than it was planned for: stretch a polynomial schedule to the new
        length (the restored one would keep the learning rate at 0 after the old last epoch)."""
        new_total = int(engine.state.max_epochs or 0)
        for obj in self.save_dict.values():
            if isinstance(obj, torch.optim.lr_scheduler.PolynomialLR) and 0 < obj.total_iters < new_total:
                obj.total_iters = new_total
                done = min(int(engine.state.epoch), new_total)
                for group, base in zip(obj.optimizer.param_groups, obj.base_lrs, strict=False):
                    group["lr"] = base * (1.0 - done / new_total) ** obj.power
                logger.info("learning-rate schedule stretched to %d epochs", new_total)

    def __call__(self, engine: Engine) -> None:
        if is_rank0():
            _atomic_save({k: v.state_dict() for k, v in self._objects.items()}, self.path)


class TimeBudget:
    """Fit a training into a wall-clock budget: after each epoch, plan how many epochs the rest of the budget
    holds (at the mean epoch time so far, validations included), lower ``max_epochs`` to that and stretch or
    shrink a ``PolynomialLR`` to end there, so the learning rate still reaches its floor on time.

    The run ends as a normal one does (last validation, final checkpoint). It never runs more than the
    configured epochs. Two methods given the same budget on the same machine train for the same time,
    whatever their speed: the equal-budget comparisons of ``benchmarks/`` rely on it.

    Args:
        seconds: the budget, from the trainer's start (model building and caching excluded).
        lr_scheduler: the scheduler to re-plan (only ``PolynomialLR`` is re-planned; others run as configured).
    """

    def __init__(self, seconds: float, lr_scheduler: Any = None) -> None:
        if seconds <= 0:
            raise InputError(f"the time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.lr_scheduler = lr_scheduler
        self._t0 = time.perf_counter()
        self._first_epoch = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._plan)

    def _started(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()
        self._first_epoch = int(engine.state.epoch)  # a resumed run has epochs behind it
        self._max_epochs = int(engine.state.max_epochs or 0)

    def _plan(self, engine: Engine) -> None:
        done = int(engine.state.epoch) - self._first_epoch
        elapsed = time.perf_counter() - self._t0
        per_epoch = elapsed / max(done, 1)
        left = int((self.seconds - elapsed) // per_epoch) if per_epoch > 0 else 0
        total = max(int(engine.state.epoch), min(self._max_epochs, int(engine.state.epoch) + max(left, 0)))
        if total != engine.state.max_epochs:
            engine.state.max_epochs = total
        sched = self.lr_scheduler
        if isinstance(sched, torch.optim.lr_scheduler.PolynomialLR) and total > 0:
            sched.total_iters = total
            frac = min(int(engine.state.epoch) / total, 1.0)
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=False):
                # the rate of the next epoch on the re-planned schedule (the LrScheduleHandler, attached
                # earlier, has already stepped for this epoch)
                group["lr"] = base * (1.0 - frac) ** sched.power
            sched.last_epoch = int(engine.state.epoch)
            sched._last_lr = [float(g["lr"]) for g in sched.optimizer.param_groups]


class MetricsWriter:
    """Write ``metrics.json`` after every validation and when training completes (rank 0, atomically).

    Content: ``epochs`` (completed), ``best_mean_dice``/``best_epoch``, ``last`` (metrics of the latest
    validation) and ``history`` (one row per validation: epoch, mean and per-class Dice, mean training loss
    of that epoch, learning rate, seconds). With ``resume``, the history of the earlier run is kept.

    Args:
        path: the file to write.
        evaluator: the validation engine.
        class_names: foreground class names in channel order (``["liver", "tumour"]``) for the per-class keys.
        key_metric: the evaluator metric that decides the best epoch.
        resume: keep the rows of an existing file up to the resumed epoch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        evaluator: Engine,
        class_names: Sequence[str] = (),
        key_metric: str = "val_mean_dice",
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.evaluator = evaluator
        self.class_names = list(class_names)
        self.key_metric = key_metric
        self.resume = resume
        self.history: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._t0 = time.perf_counter()
        self._run_t0 = self._t0
        self._earlier_seconds = 0.0

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        self.evaluator.add_event_handler(Events.COMPLETED, self._validated)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.history = []
        self._run_t0 = time.perf_counter()
        self._earlier_seconds = 0.0
        if self.resume and self.path.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                previous = json.loads(self.path.read_text(encoding="utf-8"))
                self.history = [r for r in previous["history"] if int(r["epoch"]) <= engine.state.epoch]
                self._earlier_seconds = float(previous.get("train_seconds") or 0.0)

    def _epoch_started(self, engine: Engine) -> None:
        self._losses = []
        self._t0 = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        with contextlib.suppress(KeyError, TypeError, IndexError):
            self._losses.append(loss_of(engine.state.output))

    def _validated(self, evaluator: Engine) -> None:
        metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
        metrics.update(
            {
                k: float(torch.as_tensor(v).float().mean())
                for k, v in evaluator.state.metrics.items()
                if isinstance(v, torch.Tensor)
            }
        )
        row: dict[str, Any] = {"epoch": int(self.trainer.state.epoch), **metrics}
        if self._losses:
            row["train_loss"] = float(np.mean(self._losses))
        optimizer = getattr(self.trainer, "optimizer", None)
        if optimizer is not None:
            row["lr"] = float(optimizer.param_groups[0]["lr"])
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        self._write(self.trainer)

    def summary(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        scored = [r for r in self.history if np.isfinite(r.get(self.key_metric, float("nan")))]
        best = max(scored, key=lambda r: r[self.key_metric]) if scored else None
        return {
            "epochs": int(self.trainer.state.epoch),
            "max_epochs": int(self.trainer.state.max_epochs or 0),
            "key_metric": self.key_metric,
            "best_mean_dice": None if best is None else best[self.key_metric],
            "best_epoch": None if best is None else best["epoch"],
            "best": best,
            "last": self.history[-1] if self.history else None,
            "class_names": self.class_names,
            # wall time of the training (validations included), summed over resumed sessions
            "train_seconds": round(self._earlier_seconds + time.perf_counter() - self._run_t0, 1),
            "history": self.history,
        }

    def _write(self, engine: Engine) -> None:
        if is_rank0():
            atomic_write_json(self.path, self.summary())


