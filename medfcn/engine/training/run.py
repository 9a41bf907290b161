""":func:`train`: a bundle's own ``configs/train.json`` run through MONAI's ``ConfigWorkflow``, with the options
a user types (data folder, epochs, device, AMP, resume, folds, MLflow) turned into config overrides.

``train()`` reads as its steps: plan the run (check the bundle, the dataset and the options; decide the run
folder), record the split, prepare the run folder, start tracking, build the engines, run, and report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medfcn._io import atomic_write_json
from medfcn.bundle import load_bundle, working_directory
from medfcn.engine.training.config import (
    check_fold,
    check_patch_size,
    check_resume,
    copy_bundle_files,
    missing_dataset,
    params_view,
    parse_overrides,
    split_params,
    split_record,
)
from medfcn.engine.training.handlers import TimeBudget
from medfcn.engine.training.progress import TrainingProgress
from medfcn.errors import BundleError, DataError, InputError, one_line, root_cause
from medfcn.runtime import resolve_device
from medfcn.tracking import NoTracking, RunTracker, start_tracking

__all__ = ["AmpDtype", "TrainResult", "train"]

logger = logging.getLogger(__name__)

AmpDtype = Literal["auto", "fp16", "bf16"]


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        bundle: the bundle folder.
        output_dir: the run folder (``checkpoints/last.pt``, ``metrics.json``, the executed config).
        model_path: ``models/model.pt`` of the bundle: the best weights.
        metrics: the content of ``metrics.json``.
        tracking_uri: the MLflow store, or ``None`` when tracking was off.
        experiment: the MLflow experiment, or ``None``.
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


@dataclass
class _Plan:
    """What :func:`train` decided before building anything: the files, the folders and the overrides."""

    root: Path
    config_files: list[str]
    raw: dict[str, Any]
    updates: dict[str, Any]
    data: Path
    data_channels: int
    out: Path
    models_dir: Path
    isolated: bool

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def train_json(self) -> Path:
        return self.configs / "train.json"

    @property
    def meta_json(self) -> Path:
        return self.configs / "metadata.json"


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
        amp_dtype: ``auto`` / ``fp16`` / ``bf16`` (see :func:`medfcn.runtime.autocast_dtype`).
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
        time_budget: wall-clock seconds for the training loop (:class:`~medfcn.engine.training.handlers.TimeBudget`):
            the epochs and the learning rate schedule are planned to end within it; ``epochs`` stays the upper
            bound.

    Returns:
        A :class:`TrainResult`; the weights are in ``<models>/model.pt`` (written atomically).

    Raises:
        BundleError: the bundle or its configs are missing or invalid.
        DataError: no dataset at ``data_dir`` (the message says how to get one).
        InputError: bad options (device, overrides, nothing to resume).
    """
    t0, started_at = time.perf_counter(), time.time()
    plan = _plan(
        bundle,
        data_dir=data_dir,
        output_dir=output_dir,
        fold=fold,
        num_folds=num_folds,
        device=device,
        options={"epochs": epochs, "val_interval": val_interval, "amp": amp, "amp_dtype": amp_dtype, "seed": seed},
        resume=resume,
        overrides=overrides,
    )
    meta = json.loads(plan.meta_json.read_text(encoding="utf-8"))
    bundle_name = str(meta.get("name") or plan.root.name)
    split = split_record(plan.config_files, {**plan.updates, "device": "$torch.device('cpu')"}, plan.root, plan.raw)
    if _is_rank0_env():
        _prepare_output(plan, split)
    tracker = start_tracking(
        tracking and _is_rank0_env(),
        plan.out,
        tracking_uri=tracking_uri,
        experiment=experiment or bundle_name,
        run_name=run_name,
        bundle_name=bundle_name,
        resume=resume,
    )
    if not tracking:
        logger.info("MLflow tracking is off")
    workflow, parser, trainer, evaluator = _build(plan, tracker, meta, split)
    check_patch_size(parser, plan.train_json)
    TrainingProgress(evaluator, [str(c) for c in (parser.get("class_names") or [])], quiet).attach(trainer)
    if time_budget is not None:
        schedule = parser.get_parsed_content("lr_scheduler") if "lr_scheduler" in parser else None
        TimeBudget(time_budget, schedule).attach(trainer)
    plan.models_dir.mkdir(parents=True, exist_ok=True)
    stale_exports = _exports_in(plan.models_dir)
    _run(workflow, plan.root)
    result = _report(plan, tracker, stale_exports, time.perf_counter() - t0)
    _follow_data_channels(plan, result, started_at)
    return result


def _plan(
    bundle: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str] | None,
    fold: int | str | None,
    num_folds: int | None,
    device: str,
    options: Mapping[str, Any],
    resume: bool,
    overrides: Mapping[str, Any] | Sequence[str] | None,
) -> _Plan:
    """Check the bundle, the dataset and the options, and turn them into config overrides."""
    root = Path(bundle).expanduser().resolve()
    configs = root / "configs"
    train_json = configs / "train.json"
    for required in (train_json, configs / "metadata.json", configs / "inference.json"):
        if not required.is_file():
            raise BundleError(f"{required} not found: {bundle} is not a medfcn/MONAI bundle folder")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config_files = [str(train_json)]
    if world > 1:
        multi = configs / "multi_gpu_train.json"
        if not multi.is_file():
            raise BundleError(f"{multi} not found: needed to train under torchrun (WORLD_SIZE={world})")
        config_files.append(str(multi))

    bundle_door = load_bundle(root)  # the one door into a bundle folder (configs read as their text, no macros)
    raw = bundle_door.config([Path(f).name for f in config_files], macros=False)
    updates: dict[str, Any] = {"bundle_root": str(root)}
    if fold is not None or num_folds is not None:
        fold, folds = check_fold(fold, num_folds, raw, train_json)
        updates["fold"], updates["num_folds"] = fold, folds
    data = Path(data_dir if data_dir is not None else raw.get("dataset_dir", "data")).expanduser().resolve()
    if not (data / "dataset.json").is_file() and not (data.is_file() and data.suffix.lower() in (".csv", ".json")):
        raise missing_dataset(data)
    updates["dataset_dir"] = str(data)
    # Datasets beside MSD (nnU-Net v2 raw, CSV/JSON lists: medfcn.data.datasets): channels -> in_channels.
    from medfcn.bundle import channel_updates
    from medfcn.data.datasets import count_channels

    data_channels = count_channels(data)
    updates.update(channel_updates(root, data_channels))
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
    dev = resolve_device(device)
    if world <= 1:
        updates["device"] = f"$torch.device('{dev}')"
    updates.update(_option_updates(options))
    last = out / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise InputError(f"nothing to resume in {out}: {last} does not exist (train without --resume first)")
        check_resume(last, int(updates.get("epochs", raw.get("epochs", 0)) or 0))
        updates["resume"] = True
    user = (
        parse_overrides(overrides)
        if isinstance(overrides, (list, tuple))
        else dict(overrides or {})  # type: ignore[arg-type]
    )
    updates.update(user)
    _warn_training_only(user, raw)
    return _Plan(root, config_files, raw, updates, data, data_channels, out, models_dir, isolated)


def _option_updates(options: Mapping[str, Any]) -> dict[str, Any]:
    """The typed options (epochs, val_interval, amp, amp_dtype, seed) as config overrides; ``None`` keeps the
    bundle's value."""
    updates: dict[str, Any] = {}
    for key in ("epochs", "val_interval"):
        value = options.get(key)
        if value is not None:
            if value < 1:
                raise InputError(f"{key} must be >= 1, got {value}")
            updates[key] = int(value)
    if options.get("amp") is not None:
        updates["amp"] = bool(options["amp"])
    if options.get("amp_dtype") is not None:
        updates["amp_dtype"] = options["amp_dtype"]
    if options.get("seed") is not None:
        updates["seed"] = int(options["seed"])
    return updates


def _warn_training_only(user: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
    """Warn when an override changes, for training only, what train.json takes from inference.json."""
    shared = sorted(k for k in user if isinstance(raw.get(k), str) and str(raw[k]).startswith("%configs/inference.json"))
    if shared:
        logger.warning(
            "%s overridden for training only; configs/inference.json still defines %s for inference. A network "
            "run on other inputs than it was trained on (window size, spacing, intensities) gives other "
            "results: change them in configs/inference.json (medfcn.bundle.set_patch_size) instead",
            ", ".join(shared),
            "them" if len(shared) > 1 else "it",
        )


def _prepare_output(plan: _Plan, split: Mapping[str, Any] | None) -> None:
    """Make the run folder a copy of the bundle (or say the bundle's weights are replaced); write ``split.json``."""
    if plan.isolated:
        copy_bundle_files(plan.root, plan.out)
    elif (plan.models_dir / "model.pt").is_file():
        logger.warning(
            "this run replaces %s (pass --output DIR to train into a copy and keep the bundle as it is)",
            plan.models_dir / "model.pt",
        )
    if split is not None:
        atomic_write_json(plan.out / "split.json", split)


def _build(
    plan: _Plan, tracker: RunTracker | NoTracking, meta: Mapping[str, Any], split: Mapping[str, Any] | None
) -> tuple[Any, Any, Any, Any]:
    """The ``ConfigWorkflow`` with its parser, trainer and evaluator (``None`` without ``validate#evaluator``)."""
    from monai.bundle import ConfigWorkflow

    inference = load_bundle(plan.configs.parent).config("inference.json", macros=False)
    settings = tracker.settings(
        params={**params_view(plan.raw, plan.updates, meta, inference), **split_params(split)},
        metadata=meta,
        data_dir=plan.data,
        artifacts=[str(plan.meta_json), str(plan.out / "metrics.json"), str(plan.models_dir / "model.pt")],
    )
    workflow = ConfigWorkflow(
        config_file=plan.config_files,
        meta_file=str(plan.meta_json),
        logging_file=False,
        workflow_type="train",
        tracking=settings,
        **plan.updates,
    )
    # Bundle macros ("%configs/inference.json#pixdim") resolve relative to the working directory, as under
    # `python -m monai.bundle run` from the bundle root: parse and run from there.
    try:
        with working_directory(plan.root):
            workflow.initialize()
            parser = workflow.parser
            trainer = parser.get_parsed_content("train#trainer")
            evaluator = parser.get_parsed_content("validate#evaluator") if "validate#evaluator" in parser else None
    except (InputError, DataError):
        raise
    except Exception as err:
        reason = one_line(root_cause(err), typed=True)
        raise BundleError(f"{plan.train_json}: cannot build the training: {reason}") from err
    tracker.record_config(parser.get())
    return workflow, parser, trainer, evaluator


def _exports_in(models_dir: Path) -> list[Path]:
    """TorchScript/ONNX exports already there: the run makes them stale."""
    return [f for f in (models_dir / "model.ts", models_dir / "model.onnx") if f.is_file()]


def _run(workflow: Any, root: Path) -> None:
    """Run the workflow from the bundle root, and finalise it (handlers close, MLflow ends) whatever happens."""
    try:
        with working_directory(root):
            workflow.run()
    finally:
        with working_directory(root):
            workflow.finalize()


def _report(
    plan: _Plan, tracker: RunTracker | NoTracking, stale_exports: Sequence[Path], seconds: float
) -> TrainResult:
    """Read back ``metrics.json``, record the MLflow run id, warn about stale exports."""
    metrics_file = plan.out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    run_id = tracker.finish()
    for export in stale_exports:
        logger.warning(
            "%s was exported from the weights this run replaced: run `medfcn export --bundle %s` again",
            export,
            plan.out if plan.isolated else plan.root,
        )
    return TrainResult(
        bundle=plan.root,
        output_dir=plan.out,
        model_path=plan.models_dir / "model.pt",
        metrics=metrics,
        tracking_uri=tracker.tracking_uri,
        experiment=tracker.experiment,
        run_id=run_id,
        seconds=seconds,
    )


def _follow_data_channels(plan: _Plan, result: TrainResult, started_at: float) -> None:
    """Trained on another channel count than the bundle declared: its inference must build that network."""
    weights = result.model_path
    if "network_def" in plan.updates and weights.is_file() and weights.stat().st_mtime >= started_at:
        from medfcn.bundle import set_in_channels

        set_in_channels(weights.parent.parent, plan.data_channels)
        logger.warning(
            "in_channels set to %d (the dataset's channels) in %s/configs", plan.data_channels, weights.parent.parent
        )


def _is_rank0_env() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
