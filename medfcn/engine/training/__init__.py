"""Training a medfcn bundle: MONAI engines and handlers, plus the few pieces MONAI does not have.

``bundles/<name>/configs/train.json`` is an ordinary MONAI bundle config (model-zoo layout: ``train#trainer``,
``validate#evaluator``, ``train#handlers`` ...). It runs unchanged under ``python -m monai.bundle run`` from
the bundle root; :func:`train` runs the same config through MONAI's ``ConfigWorkflow`` with the options a
user types turned into config overrides.

One idea per module:

* :mod:`~medfcn.engine.training.engines`: :class:`FCNTrainer` / :class:`FCNEvaluator`, MONAI's engines with
  autocast on any device and gradient clipping after unscaling.
* :mod:`~medfcn.engine.training.metrics`: :class:`ClassDice`, the Dice of one class as an ignite metric.
* :mod:`~medfcn.engine.training.handlers`: :class:`PeriodicValidation`, :class:`ResumableCheckpoint`,
  :class:`TimeBudget`, :class:`MetricsWriter`.
* :mod:`~medfcn.engine.training.progress`: the console view (a bar per epoch, a line per validation).
* :mod:`~medfcn.engine.training.config`: checks of the options and the config before anything is built, and
  the hyper-parameters MLflow shows.
* :mod:`~medfcn.engine.training.run`: :func:`train` and :class:`TrainResult`.

Bundles name the pieces by this package (``"_target_": "medfcn.engine.training.FCNTrainer"``), so these names
stay here whatever module holds them.

Example:
    >>> result = train("bundles/liver", data_dir="data/SyntheticLiver", epochs=2, device="cpu")  # doctest: +SKIP
    >>> result.best_metric, result.model_path  # doctest: +SKIP
"""

from __future__ import annotations

from medfcn.engine.training.config import parse_overrides
from medfcn.engine.training.engines import FCNEvaluator, FCNTrainer
from medfcn.engine.training.handlers import MetricsWriter, PeriodicValidation, ResumableCheckpoint, TimeBudget
from medfcn.engine.training.metrics import ClassDice
from medfcn.engine.training.run import AmpDtype, TrainResult, train

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
    "parse_overrides",
    "train",
]
