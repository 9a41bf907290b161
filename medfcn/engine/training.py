"""Training a medfcn bundle: MONAI engines and handlers, plus the few pieces MONAI does not have.

``bundles/<name>/configs/train.json`` is an ordinary MONAI bundle config (model-zoo layout: ``train#trainer``,
``validate#evaluator``, ``train#handlers`` ...). It runs unchanged under ``python -m monai.bundle run`` from
the bundle root; :func:`train` runs the same config through MONAI's ``ConfigWorkflow`` with the options a
user types (data folder, epochs, device, AMP, resume, MLflow) turned into config overrides.

What this module adds to MONAI, each referenced by ``_target_`` from ``train.json``:

* :class:`FCNTrainer` / :class:`FCNEvaluator`: ``SupervisedTrainer`` / ``SupervisedEvaluator`` with autocast
  on any device (CUDA fp16 with ``torch.amp.GradScaler("cuda")``, CUDA/CPU bf16) and gradient clipping after
  unscaling (MONAI's engines autocast on CUDA only and do not clip).
* :class:`ClassDice`: Dice of one class as an ignite metric, so per-class Dice reaches StatsHandler and MLflow.
* :class:`PeriodicValidation`: MONAI's ``ValidationHandler`` that also validates after the last epoch.
* :class:`ResumableCheckpoint`: ``last.pt`` after every epoch (model, optimiser, scheduler, trainer state,
  GradScaler, best metric and its tracking list, RNG states), written atomically; with ``resume`` it is
  loaded by MONAI's ``CheckpointLoader`` before the first epoch.
* :class:`MetricsWriter`: ``metrics.json`` (history, best epoch, per-class Dice) after every validation.

Example:
    >>> result = train("bundles/liver", data_dir="data/SyntheticLiver", epochs=2, device="cpu")  # doctest: +SKIP
    >>> result.best_metric, result.model_path  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.handlers import CheckpointLoader, ValidationHandler, from_engine
from monai.utils.enums import CommonKeys as Keys

from medfcn._io import atomic_write, atomic_write_json
from medfcn.bundle import working_directory as _working_directory
from medfcn.errors import BundleError, DataError, InputError
from medfcn.runtime import autocast_dtype  # the one autocast-dtype rule, shared with inference
from medfcn.runtime import resolve_device as _resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from monai.handlers import CheckpointSaver

__all__ = [
    "AmpDtype",
    "ClassDice",
    "FCNEvaluator",
    "FCNTrainer",
    "MetricsWriter",
    "PeriodicValidation",
    "ResumableCheckpoint",
    "TimeBudget",
    "TrainResult",
    "autocast_dtype",
    "parse_overrides",
    "train",
]

logger = logging.getLogger(__name__)

AmpDtype = Literal["auto", "fp16", "bf16"]


def _split_batch(batch: Any) -> tuple[Any, Any, tuple, dict]:
    if len(batch) == 2:
        return batch[0], batch[1], (), {}
    return batch[0], batch[1], batch[2], batch[3]


class FCNTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` with device-agnostic autocast and gradient clipping.

    Args:
        amp: autocast the forward pass and the loss (see :func:`autocast_dtype`).
        amp_dtype: ``auto``, ``fp16`` (CUDA only, with ``torch.amp.GradScaler("cuda")``) or ``bf16``.
        grad_clip_norm: clip the global gradient norm to this value after unscaling (``None``/0: no clipping).
        *args, **kwargs: as ``SupervisedTrainer`` (``amp``-related MONAI arguments are not used).

    The GradScaler, when there is one, is ``self.scaler`` and is saved by :class:`ResumableCheckpoint`.
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
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = _split_batch(batch)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        dtype = self.autocast_dtype
        with torch.autocast(torch.device(engine.state.device).type, dtype=dtype, enabled=dtype is not None):
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
    """MONAI ``SupervisedEvaluator`` with autocast on any device (see :func:`autocast_dtype`)."""

    def __init__(self, *args: Any, amp: bool = False, amp_dtype: str = "auto", **kwargs: Any) -> None:
        kwargs.pop("amp_kwargs", None)
        kwargs["amp"] = False
        super().__init__(*args, **kwargs)
        self.amp = bool(amp)
        self.autocast_dtype = autocast_dtype(self.state.device, self.amp, amp_dtype)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = _split_batch(batch)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        dtype = self.autocast_dtype
        with engine.mode(engine.network), torch.autocast(
            torch.device(engine.state.device).type, dtype=dtype, enabled=dtype is not None
        ):
            pred = engine.inferer(inputs, engine.network, *args, **kwargs)
        engine.state.output[Keys.PRED] = pred.float() if dtype is not None else pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


# --------------------------------------------------------------------------------------------- metrics


class ClassDice(Metric):
    """Mean Dice of one class over the cases of an evaluation (an ignite metric).

    Expects the decollated, one-hot ``pred``/``label`` of MONAI's postprocessing (``AsDiscreted`` with
    ``to_onehot``). A case where the class is absent from both scores 1 (nothing to find, nothing found),
    so an empty tumour class does not read as a failure. Averaged over all ranks under DDP.

    Args:
        channel: the class index (one-hot channel).
        output_transform: engine output -> ``(preds, labels)`` lists.
    """

    def __init__(
        self,
        channel: int,
        output_transform: Callable = from_engine([Keys.PRED, Keys.LABEL]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.channel = int(channel)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        for p, g in zip(preds, labels, strict=False):
            p_c = torch.as_tensor(p)[self.channel].bool()
            g_c = torch.as_tensor(g)[self.channel].bool()
            denom = int(p_c.sum()) + int(g_c.sum())
            self._sum += 1.0 if denom == 0 else 2.0 * int((p_c & g_c).sum()) / denom
            self._count += 1

    def compute(self) -> float:
        total = torch.tensor([self._sum, float(self._count)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")


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


# --------------------------------------------------------------------------------------------- files


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _loss_of(output: Any) -> float:
    """The loss of a trainer iteration's output (a dict, or a list of dicts once decollated)."""
    item = output[0] if isinstance(output, (list, tuple)) else output
    return float(item[Keys.LOSS])


def _is_rank0() -> bool:
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
        if _is_rank0():
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
            self._losses.append(_loss_of(engine.state.output))

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
        if _is_rank0():
            atomic_write_json(self.path, self.summary())


# --------------------------------------------------------------------------------------------- progress


class _Progress:
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
            self._loss.append(_loss_of(engine.state.output))
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
        if not self.quiet and _is_rank0():
            from tqdm.auto import tqdm

            tqdm.write(message)


# --------------------------------------------------------------------------------------------- train()


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        bundle: the bundle folder.
        output_dir: the run folder (``checkpoints/last.pt``, ``metrics.json``, the executed config).
        model_path: ``models/model.pt`` of the bundle: the best weights.
        metrics: the content of ``metrics.json``.
        tracking_uri: the MLflow store, or ``None`` when tracking was off.
        run_id: the MLflow run id, or ``None``.
        seconds: wall-clock time.
    """

    bundle: Path
    output_dir: Path
    model_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str | None = None
    run_id: str | None = None
    seconds: float = 0.0

    @property
    def best_metric(self) -> float | None:
        """Best mean Dice of the validations (``None`` if none ran)."""
        value = self.metrics.get("best_mean_dice")
        return None if value is None else float(value)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a#b=1", "lr=0.01", "x=[1,2]", "name=abc"]`` -> ``{"a#b": 1, ...}`` (values parsed as JSON when
    they are JSON, else kept as strings, so ``$`` expressions and ``@`` references pass through).

    Raises:
        InputError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"override {pair!r} is not key=value (e.g. --override learning_rate=0.001)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _missing_dataset(data: Path) -> DataError:
    return DataError(
        f"no MSD dataset at {data} (dataset.json not found). Make a synthetic one with "
        f"`medfcn data synth --output {data}` or fetch the real liver set with "
        f"`medfcn data download Task03_Liver --output {data.parent}`, then pass it with --data"
    )


def train(
    bundle: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    val_interval: int | None = None,
    device: str = "auto",
    amp: bool | None = None,
    amp_dtype: AmpDtype | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    seed: int | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    quiet: bool = False,
    fold: int | str | None = None,
    num_folds: int | None = None,
    time_budget: float | None = None,
) -> TrainResult:
    """Train a bundle with its own ``configs/train.json`` (MONAI ``ConfigWorkflow``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) ``configs/multi_gpu_train.json`` is merged on top: DDP with NCCL
    on GPUs or gloo on CPUs, data partitioned by ``DistributedSampler``, rank 0 alone logs, saves and tracks.

    Args:
        bundle: bundle folder (``configs/train.json``, ``configs/inference.json``, ``configs/metadata.json``).
        data_dir: MSD-layout dataset (``dataset.json``); default: the config's ``dataset_dir`` (relative
            paths are relative to the current directory).
        epochs: overrides ``epochs``.
        val_interval: validate every N epochs (and after the last one); overrides ``val_interval``.
        device: ``auto`` (``cuda:LOCAL_RANK`` when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        amp: autocast; ``None`` keeps the config's default (on for CUDA). On the CPU, ``True`` uses bf16.
        amp_dtype: ``auto`` / ``fp16`` / ``bf16`` (see :func:`autocast_dtype`).
        output_dir: run folder (default ``<bundle>/runs/train``; ``<bundle>/runs/fold_K`` for ``fold=K``). When it is
            given (or a fold is trained), the run folder becomes a trained copy of the bundle (its configs,
            docs and ``models/model.pt``) and the source bundle stays byte-identical; without it the bundle's
            own ``models/model.pt`` is replaced (logged).
        resume: continue from ``<output_dir>/checkpoints/last.pt``.
        seed: overrides ``seed`` (transforms and initialisation; the train/validation split has ``split_seed``).
        overrides: further config overrides, ``{"id#key": value}`` or ``["id#key=value", ...]``.
        tracking: log the run to MLflow.
        tracking_uri: MLflow store or server; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``.
        experiment: MLflow experiment name (default: the bundle name).
        run_name: MLflow run name (default: ``<bundle>-<UTC time>``; a resumed run keeps its name).
        quiet: no progress bar or per-validation lines on the console (they still go to the log).
        fold: cross-validation fold ``0 .. num_folds - 1`` (validation = that fold, training = the others) or
            ``"all"`` (train on every case, nnU-Net's ``fold all``, for the model that ships); ``None`` keeps the
            bundle's split. The split is deterministic (``split_seed``) and recorded in ``split.json`` and
            MLflow (counts and a digest, never case names).
        num_folds: number of folds (default: the bundle's ``num_folds``, 5).
        time_budget: wall-clock seconds for the training loop (:class:`TimeBudget`): the epochs and the learning
            rate schedule are planned to end within it; ``epochs`` stays the upper bound.

    Returns:
        A :class:`TrainResult`; the weights are in ``<models>/model.pt`` (written atomically).

    Raises:
        BundleError: the bundle or its configs are missing or invalid.
        DataError: no dataset at ``data_dir`` (the message says how to get one).
        InputError: bad options (device, overrides, nothing to resume).
    """
    from monai.bundle import ConfigWorkflow

    from medfcn import tracking as tracking_mod

    t0 = time.perf_counter()
    started_at = time.time()
    root = Path(bundle).expanduser().resolve()
    configs = root / "configs"
    train_json, meta_json = configs / "train.json", configs / "metadata.json"
    for required in (train_json, meta_json, configs / "inference.json"):
        if not required.is_file():
            raise BundleError(f"{required} not found: {bundle} is not a medfcn/MONAI bundle folder")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config_files = [str(train_json)]
    if world > 1:
        multi = configs / "multi_gpu_train.json"
        if not multi.is_file():
            raise BundleError(f"{multi} not found: needed to train under torchrun (WORLD_SIZE={world})")
        config_files.append(str(multi))

    raw = _read_raw_config(config_files)
    updates: dict[str, Any] = {"bundle_root": str(root)}
    if fold is not None or num_folds is not None:
        fold, folds = _check_fold(fold, num_folds, raw, train_json)
        updates["fold"], updates["num_folds"] = fold, folds
    data = Path(data_dir if data_dir is not None else raw.get("dataset_dir", "data")).expanduser()
    data = data.resolve()
    if not (data / "dataset.json").is_file() and not (data.is_file() and data.suffix.lower() in (".csv", ".json")):
        raise _missing_dataset(data)
    updates["dataset_dir"] = str(data)
    # -- datasets beside MSD (nnU-Net v2 raw, CSV/JSON lists: medfcn.data.datasets); channels -> in_channels
    from medfcn.bundle import channel_updates
    from medfcn.data.datasets import count_channels

    data_channels = count_channels(data)
    updates.update(channel_updates(root, data_channels))
    # --
    if output_dir is not None:
        out = Path(output_dir).expanduser().resolve()
    else:
        out = root / "runs" / (f"fold_{fold}" if isinstance(fold, int) else "train")
    updates["output_dir"] = str(out)
    # A run folder of its own is a trained copy of the bundle: the source bundle is never written.
    isolated = (output_dir is not None or isinstance(fold, int)) and out != root
    models_dir = out / "models" if isolated else root / "models"
    if "ckpt_dir" in raw:
        updates["ckpt_dir"] = str(models_dir)
    dev = _resolve_device(device)
    if world <= 1:
        updates["device"] = f"$torch.device('{dev}')"
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"epochs must be >= 1, got {epochs}")
        updates["epochs"] = int(epochs)
    if val_interval is not None:
        if val_interval < 1:
            raise InputError(f"val_interval must be >= 1, got {val_interval}")
        updates["val_interval"] = int(val_interval)
    if amp is not None:
        updates["amp"] = bool(amp)
    if amp_dtype is not None:
        updates["amp_dtype"] = amp_dtype
    if seed is not None:
        updates["seed"] = int(seed)
    last = out / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise InputError(f"nothing to resume in {out}: {last} does not exist (train without --resume first)")
        _check_resume(last, int(updates.get("epochs", raw.get("epochs", 0)) or 0))
        updates["resume"] = True
    user = (
        parse_overrides(overrides)
        if isinstance(overrides, (list, tuple))
        else dict(overrides or {})  # type: ignore[arg-type]
    )
    updates.update(user)
    shared = sorted(k for k in user if isinstance(raw.get(k), str) and str(raw[k]).startswith("%configs/inference.json"))
    if shared:
        logger.warning(
            "%s overridden for training only; configs/inference.json still defines %s for inference. A network "
            "run on other inputs than it was trained on (window size, spacing, intensities) gives other "
            "results: change them in configs/inference.json (medfcn.bundle.set_patch_size) instead",
            ", ".join(shared),
            "them" if len(shared) > 1 else "it",
        )

    meta = json.loads(meta_json.read_text(encoding="utf-8"))
    bundle_name = str(meta.get("name") or root.name)
    split = _split_record(config_files, {**updates, "device": "$torch.device('cpu')"}, root, raw)
    if _is_rank0_env():
        if isolated:
            _copy_bundle_files(root, out)
        elif (models_dir / "model.pt").is_file():
            logger.warning(
                "this run replaces %s (pass --output DIR to train into a copy and keep the bundle as it is)",
                models_dir / "model.pt",
            )
        if split is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "split.json", split)
    settings = None
    run_info: dict[str, Any] = {}
    if tracking and _is_rank0_env():
        out.mkdir(parents=True, exist_ok=True)
        run_info = tracking_mod.prepare_run(
            out,
            tracking_uri=tracking_uri,
            experiment=experiment or bundle_name,
            run_name=run_name,
            bundle_name=bundle_name,
            resume=resume,
        )
        settings = tracking_mod.mlflow_settings(
            tracking_uri=run_info["tracking_uri"],
            experiment=run_info["experiment"],
            run_name=run_info["run_name"],
            run_id=run_info.get("run_id"),
            params=tracking_mod.flatten_params(
                {
                    **_params_view(raw, updates, meta, _read_raw_config([str(configs / "inference.json")])),
                    **_split_params(split),
                }
            ),
            tags=tracking_mod.run_tags(bundle_name, meta, data),
            artifacts=[str(meta_json), str(out / "metrics.json"), str(models_dir / "model.pt")],
            config_path=str(out / "config_executed.json"),
        )
    elif not tracking:
        logger.info("MLflow tracking is off")

    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=str(meta_json),
        logging_file=False,
        workflow_type="train",
        tracking=settings,
        **updates,
    )
    # Bundle macros ("%configs/inference.json#pixdim") resolve relative to the working directory, as under
    # `python -m monai.bundle run` from the bundle root: parse and run from there.
    try:
        with _working_directory(root):
            workflow.initialize()
            parser = workflow.parser
            trainer = parser.get_parsed_content("train#trainer")
            evaluator = parser.get_parsed_content("validate#evaluator") if "validate#evaluator" in parser else None
    except (InputError, DataError):
        raise
    except Exception as err:
        raise BundleError(f"{train_json}: cannot build the training: {_first_line(err)}") from err
    if settings is not None:
        # The executed config with every macro resolved (what actually ran), as the MLflow artifact.
        atomic_write_json(out / "config_executed.json", parser.get())
    class_names = [str(c) for c in (parser.get("class_names") or [])]
    _check_patch_size(parser, train_json)
    _Progress(evaluator, class_names, quiet).attach(trainer)
    if time_budget is not None:
        sched = parser.get_parsed_content("lr_scheduler") if "lr_scheduler" in parser else None
        TimeBudget(time_budget, sched).attach(trainer)
    models_dir.mkdir(parents=True, exist_ok=True)
    exports_before = {f: f.stat().st_mtime_ns for f in (models_dir / "model.ts", models_dir / "model.onnx") if f.is_file()}
    try:
        with _working_directory(root):
            workflow.run()
    finally:
        with _working_directory(root):
            workflow.finalize()
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    run_id = tracking_mod.find_run_id(run_info) if run_info else None
    if run_id and _is_rank0_env():
        tracking_mod.record_run_id(out, run_id)
    for export in exports_before:
        logger.warning(
            "%s was exported from the weights this run replaced: run `medfcn export --bundle %s` again",
            export,
            out if isolated else root,
        )
    result = TrainResult(
        bundle=root,
        output_dir=out,
        model_path=models_dir / "model.pt",
        metrics=metrics,
        tracking_uri=run_info.get("tracking_uri"),
        experiment=run_info.get("experiment"),
        run_id=run_id,
        seconds=time.perf_counter() - t0,
    )
    # -- trained on another channel count than the bundle declared: its inference must build that network
    weights = result.model_path
    if "network_def" in updates and weights.is_file() and weights.stat().st_mtime >= started_at:
        from medfcn.bundle import set_in_channels

        set_in_channels(weights.parent.parent, data_channels)
        logger.warning("in_channels set to %d (the dataset's channels) in %s/configs", data_channels, weights.parent.parent)
    # --
    return result


def _is_rank0_env() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _check_fold(
    fold: int | str | None, num_folds: int | None, raw: Mapping[str, Any], train_json: Path
) -> tuple[int | str | None, int]:
    """Validate ``fold``/``num_folds`` against the bundle; ``"3"`` becomes 3."""
    if "fold" not in raw or "num_folds" not in raw:
        raise BundleError(
            f"{train_json} has no 'fold'/'num_folds' ids, so it cannot cross-validate: add \"fold\": null, "
            "\"num_folds\": 5 and pass fold=@fold, num_folds=@num_folds to msd.split_datalist in its 'split'"
        )
    folds = int(num_folds if num_folds is not None else raw.get("num_folds") or 5)
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    if isinstance(fold, str) and fold.strip().lower() != "all":
        try:
            fold = int(fold)
        except ValueError:
            raise InputError(f"--fold must be 'all' or an integer in [0, {folds - 1}], got {fold!r}") from None
    if isinstance(fold, str):
        fold = "all"
    if isinstance(fold, int) and not 0 <= fold < folds:
        raise InputError(f"--fold must be 'all' or an integer in [0, {folds - 1}], got {fold}")
    return fold, folds


def _check_resume(last: Path, epochs: int) -> None:
    """A resumed run must have epochs left: say so in one line rather than let ignite raise."""
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        trainer = state["trainer"]  # ignite keeps iterations; the epoch follows from them
        done = int(trainer["epoch"]) if "epoch" in trainer else int(trainer["iteration"]) // int(trainer["epoch_length"])
    except Exception as err:  # a truncated or foreign file: name it
        raise InputError(f"{last} is not a readable medfcn checkpoint ({_first_line(err)}); train without --resume") from err
    if epochs and epochs <= done:
        raise InputError(
            f"{last.parent.parent} already completed {done} epoch(s); --resume continues a run only to more "
            f"epochs (e.g. --epochs {done + 10}) — or start a new run without --resume"
        )


def _split_record(
    config_files: Sequence[str], updates: Mapping[str, Any], root: Path, raw: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The train/validation split the config will use (``split``), for ``split.json`` and MLflow."""
    from monai.bundle import ConfigParser

    if "split" not in raw:
        return None
    parser = ConfigParser()
    parser.read_config(list(config_files))
    for key, value in updates.items():
        parser[key] = value
    try:
        with _working_directory(root):
            train_items, val_items = parser.get_parsed_content("split")
    except (InputError, DataError):
        raise
    except Exception as err:
        inner: BaseException = err
        while inner.__cause__ is not None:
            inner = inner.__cause__
        if isinstance(inner, (InputError, DataError)):
            raise inner from None
        raise BundleError(f"{config_files[0]}: cannot build the train/validation split: {_first_line(err)}") from err
    from medfcn.data.msd import case_id, split_digest

    val = sorted(case_id(i) for i in val_items)
    train = sorted(case_id(i) for i in train_items)
    digest = split_digest(train_items, val_items)
    merged = {**raw, **updates}
    return {
        "fold": merged.get("fold"),
        "num_folds": merged.get("num_folds"),
        "split_seed": merged.get("split_seed"),
        "val_fraction": None if merged.get("fold") is not None else merged.get("val_fraction"),
        "val_held_out": merged.get("fold") != "all",
        "sha1": digest,
        "train": train,
        "val": val,
    }


def _split_params(split: Mapping[str, Any] | None) -> dict[str, Any]:
    """The split as MLflow params: fold, counts and a digest of the case lists (names stay local)."""
    if split is None:
        return {}
    return {
        "fold": split["fold"],
        "num_folds": split["num_folds"],
        "split_sha1": split["sha1"],
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
    }


def _copy_bundle_files(root: Path, out: Path) -> None:
    """Make ``out`` a bundle: the source's configs, docs and licence files (never its weights or runs)."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name in ("models", "runs", "eval", "logs") or entry.resolve() == out or out.is_relative_to(entry):
            continue
        target = out / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


def _check_patch_size(parser: Any, train_json: Path) -> None:
    """Refuse a patch too small for the network's total stride before ignite raises deep in a forward."""
    from medfcn.networks import FCN

    if "patch_size" not in parser or "network_def" not in parser:
        return
    try:
        patch = [int(p) for p in parser.get_parsed_content("patch_size")]
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception:  # not ours to judge: the run itself will say what is wrong
        return
    if not isinstance(net, FCN):
        return
    total = [1] * len(patch)
    for stride in net.encoder.strides:
        total = [t * s for t, s in zip(total, stride, strict=False)]
    deepest = [-(-p // t) for p, t in zip(patch, total, strict=False)]
    if int(np.prod(deepest)) <= 1:
        smallest = [t + 1 if i == 0 else 1 for i, t in enumerate(total)]
        example = [t * 2 for t in total]
        raise InputError(
            f"patch_size {patch} is too small for the network of {train_json.parent / 'inference.json'}: its total "
            f"stride is {total}, so the deepest stage would hold a single voxel, which instance norm cannot "
            f"normalise; the smallest valid patch has more than {total} voxels on one axis (e.g. {smallest}), "
            f"multiples of the stride work best: set \"patch_size\": {example} in configs/inference.json"
        )


def _first_line(err: BaseException) -> str:
    """The innermost cause's first line: MONAI wraps config errors in "Failed to instantiate ..." layers."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _read_raw_config(files: Sequence[str]) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(list(files))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {', '.join(files)}: {err}") from err
    config = parser.get()
    if not isinstance(config, dict):
        raise BundleError(f"{files[0]}: expected a JSON object at the top level")
    return config


_PARAM_IDS = (
    "epochs",
    "val_interval",
    "learning_rate",
    "weight_decay",
    "grad_clip_norm",
    "batch_size",
    "num_samples",
    "pos_neg_ratio",
    "val_fraction",
    "split_seed",
    "seed",
    "amp",
    "amp_dtype",
    "cache_rate",
    "device",
    "resume",
)


def _params_view(
    raw: Mapping[str, Any], updates: Mapping[str, Any], meta: Mapping[str, Any], inference: Mapping[str, Any]
) -> dict[str, Any]:
    """The hyper-parameters worth comparing across runs (never paths: a hospital path can name a patient)."""
    merged = {**raw, **updates}
    view: dict[str, Any] = {k: merged[k] for k in _PARAM_IDS if k in merged}
    for key in ("loss", "optimizer", "lr_scheduler"):
        if isinstance(merged.get(key), Mapping):
            view[key] = {k: v for k, v in merged[key].items() if not str(v).startswith("@")}
    view["bundle_version"] = meta.get("version")
    # The preprocessing and network live in inference.json (train.json points there with macros).
    for key in ("pixdim", "hu_window", "patch_size", "foreground_margin", "sw_batch_size", "overlap", "network_def"):
        value = merged.get(key, inference.get(key))
        if isinstance(value, str) and value.startswith("%"):
            value = inference.get(key)
        if value is not None:
            view[key] = value
    return view
