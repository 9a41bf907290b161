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
from medfcn.bundle.export import _working_directory
from medfcn.engine.inference import _resolve_device
from medfcn.errors import BundleError, DataError, InputError

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
    "TrainResult",
    "autocast_dtype",
    "parse_overrides",
    "train",
]

logger = logging.getLogger(__name__)

AmpDtype = Literal["auto", "fp16", "bf16"]


# --------------------------------------------------------------------------------------------- precision


def autocast_dtype(device: torch.device | str, amp: bool, amp_dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device``, or ``None`` for fp32.

    ``auto`` means bf16 where the device supports it (CPUs; Ampere and newer GPUs) and fp16 on older GPUs.
    fp16 needs a GradScaler and exists on CUDA only.

    Raises:
        InputError: ``fp16`` on a CPU, or an unknown ``amp_dtype``.
    """
    dev = torch.device(device)
    if not amp:
        return None
    if amp_dtype not in ("auto", "fp16", "bf16"):
        raise InputError(f"amp_dtype must be auto, fp16 or bf16, got {amp_dtype!r}")
    if amp_dtype == "fp16":
        if dev.type != "cuda":
            raise InputError("fp16 autocast needs a CUDA device; use bf16 (amp_dtype 'auto') on the CPU")
        return torch.float16
    if amp_dtype == "bf16" or dev.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _is_rank0():
            _atomic_save({k: v.state_dict() for k, v in self._objects.items()}, self.path)


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

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        self.evaluator.add_event_handler(Events.COMPLETED, self._validated)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.history = []
        if self.resume and self.path.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                rows = json.loads(self.path.read_text(encoding="utf-8"))["history"]
                self.history = [r for r in rows if int(r["epoch"]) <= engine.state.epoch]

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
        output_dir: run folder (default: the config's ``output_dir``, ``<bundle>/runs/train``).
        resume: continue from ``<output_dir>/checkpoints/last.pt``.
        seed: overrides ``seed`` (transforms and initialisation; the train/validation split has ``split_seed``).
        overrides: further config overrides, ``{"id#key": value}`` or ``["id#key=value", ...]``.
        tracking: log the run to MLflow.
        tracking_uri: MLflow store or server; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``.
        experiment: MLflow experiment name (default: the bundle name).
        run_name: MLflow run name (default: ``<bundle>-<UTC time>``; a resumed run keeps its name).
        quiet: no progress bar or per-validation lines on the console (they still go to the log).

    Returns:
        A :class:`TrainResult`; the best weights are in ``<bundle>/models/model.pt`` (written atomically).

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
    out = Path(output_dir).expanduser().resolve() if output_dir is not None else root / "runs" / "train"
    updates["output_dir"] = str(out)
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
            params=tracking_mod.flatten_params(
                _params_view(raw, updates, meta, _read_raw_config([str(configs / "inference.json")]))
            ),
            tags=tracking_mod.run_tags(bundle_name, meta, data),
            artifacts=[str(meta_json), str(out / "metrics.json"), str(root / "models" / "model.pt")],
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
    _Progress(evaluator, class_names, quiet).attach(trainer)
    (root / "models").mkdir(exist_ok=True)
    try:
        with _working_directory(root):
            workflow.run()
    finally:
        with _working_directory(root):
            workflow.finalize()
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    run_id = tracking_mod.find_run_id(run_info) if run_info else None
    result = TrainResult(
        bundle=root,
        output_dir=out,
        model_path=root / "models" / "model.pt",
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
