"""MLflow tracking of medfcn training runs, through MONAI's ``MLFlowHandler``.

:func:`start_tracking` is the one door: it returns a :class:`RunTracker` (store chosen, run named and
recorded in ``tracking.json``) or, when tracking is off, a :class:`NoTracking` whose every method does
nothing, so training has no ``if tracking:`` branches.

MONAI's bundle workflows already know how to track a run (``python -m monai.bundle run ... --tracking
mlflow`` patches an ``MLFlowHandler`` into the trainer and the evaluator: ``DEFAULT_MLFLOW_SETTINGS`` in
``monai/bundle/utils.py``). medfcn uses that mechanism and adds what a reviewer of a run wants to see:

* the store: ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db`` with artifacts in
  ``<cwd>/mlruns`` (MLflow 3 refuses the old file store); an ``http(s)://`` URI logs to an MLflow server;
* params: the hyper-parameters, flattened (``optimizer.lr``), each value cut to MLflow's 500 characters;
* tags: medfcn/MONAI/torch/Python versions, git commit when the code is a git checkout, bundle name and
  version, and a dataset fingerprint (case counts and a hash of the file names and sizes);
* artifacts: the executed config with macros resolved, ``metadata.json``, ``metrics.json``, the best
  checkpoint.

Nothing from image headers, no dataset path and no patient identifier is logged: the fingerprint hashes
file names rather than listing them, and the params never include paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from monai.handlers import MLFlowHandler

from medfcn._io import atomic_write_json

__all__ = [
    "MlflowRunHandler",
    "NoTracking",
    "RunTracker",
    "dataset_fingerprint",
    "default_tracking_uri",
    "find_run_id",
    "flatten_params",
    "mlflow_settings",
    "record_run_id",
    "redact_uri",
    "run_tags",
    "start_tracking",
]

MAX_PARAM_LENGTH = 500  # MLflow's limit on a param value (characters)
_RUN_FILE = "tracking.json"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in the current directory."""
    from monai.utils import path_to_sqlite_uri

    return os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str(Path.cwd() / "mlflow.db"))


def redact_uri(uri: str) -> str:
    """The URI without user:password (what may be written to files and logs)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to ``{"a.b": "value"}`` with string values of at most 500 characters (MLflow's limit).

    Lists stay one param (``[1.5, 1.5, 2.0]``); ``_target_`` becomes the object's name (``optimizer``).
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}" if key != "_target_" else prefix.rstrip(".")
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)
        out[name or "target"] = text[:MAX_PARAM_LENGTH]
    return out


def dataset_fingerprint(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Case counts and a short hash of the dataset's relative file names and sizes (no names, no paths)."""
    root = Path(data_dir)
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        files = sorted(p for p in (root / sub).glob("*") if p.is_file() and not p.name.startswith("."))
        counts[sub] = len(files)
        for p in files:
            digest.update(f"{sub}/{p.name}:{p.stat().st_size}\n".encode())
    with contextlib.suppress(OSError):
        digest.update((root / "dataset.json").read_bytes())
    return {
        "dataset_fingerprint": digest.hexdigest()[:16],
        "dataset_cases": json.dumps(counts),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.strip()
    return text if proc.returncode == 0 and len(text) == 40 else None


def run_tags(bundle_name: str, metadata: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Versions, git commit, bundle identity and dataset fingerprint for the run's tags."""
    import monai
    import torch

    from medfcn._version import __version__

    tags = {
        "medfcn.version": __version__,
        "monai.version": monai.__version__,
        "torch.version": torch.__version__,
        "python.version": platform.python_version(),
        "bundle.name": bundle_name,
        "bundle.version": str(metadata.get("version", "")),
        "cuda.available": str(torch.cuda.is_available()),
    }
    commit = _git_commit()
    if commit:
        tags["git.commit"] = commit
    tags.update(dataset_fingerprint(data_dir))
    return tags


class MlflowRunHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` that also sets run tags, logs each param once and continues a recorded run.

    A resumed run logs into the same MLflow run (same run name, still ``RUNNING`` after an interruption);
    MLflow refuses to change a param's value, so params already in the run are not sent again.

    Args:
        tags: ``{name: value}`` set on the run when it starts.
        **kwargs: as ``monai.handlers.MLFlowHandler``.
    """

    def __init__(
        self,
        *args: Any,
        tags: Mapping[str, str] | None = None,
        epoch_loss: bool = False,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = run_id
        self.tags = dict(tags or {})
        self.epoch_loss = epoch_loss
        self._losses: list[float] = []

    def attach(self, engine: Any) -> None:
        super().attach(engine)
        if self.epoch_loss:
            from ignite.engine import Events

            engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._losses.clear())
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_loss)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch_loss)

    def _collect_loss(self, engine: Any) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, (list, tuple)) else output
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self._losses.append(float(item["loss"]))

    def _log_epoch_loss(self, engine: Any) -> None:
        """Mean training loss and learning rate of the epoch, at step = epoch."""
        if not self.cur_run:
            return
        values: dict[str, float] = {}
        if self._losses:
            values["train_loss"] = sum(self._losses) / len(self._losses)
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            values["lr"] = float(optimizer.param_groups[0]["lr"])
        if values:
            self._log_metrics(values, step=engine.state.epoch)

    def start(self, engine: Any) -> None:
        if self.run_id and not self.cur_run:
            # --resume of a recorded run: continue it, reopened if it had finished (extended with --epochs)
            self._set_experiment()
            try:
                run = self.client.get_run(self.run_id)
            except Exception:  # deleted or another store: MONAI's lookup by name takes over
                run = None
            if run is not None and run.info.experiment_id == getattr(self.experiment, "experiment_id", None):
                if run.info.status != "RUNNING":
                    self.client.update_run(self.run_id, status="RUNNING")
                self.cur_run = self.client.get_run(self.run_id)
        super().start(engine)
        if self.cur_run and self.tags:
            from mlflow.entities import RunTag

            run_id = self.cur_run.info.run_id
            self.client.log_batch(run_id=run_id, tags=[RunTag(k, str(v)) for k, v in self.tags.items()])

    def _log_params(self, params: dict[str, Any]) -> None:
        if not self.cur_run:
            raise ValueError("Current Run is not Active to log params")
        existing = self.client.get_run(self.cur_run.info.run_id).data.params
        fresh = {k: v for k, v in params.items() if k not in existing}
        if fresh:
            super()._log_params(fresh)


def record_run_id(output_dir: str | os.PathLike[str], run_id: str) -> None:
    """Add the MLflow run id to ``<output_dir>/tracking.json``: ``--resume`` then continues that very run,
    finished or not (MONAI's handler would open a second run of the same name for a finished one)."""
    record = Path(output_dir) / _RUN_FILE
    try:
        info = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    info["run_id"] = run_id
    atomic_write_json(record, info)


def mlflow_settings(
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    run_id: str | None = None,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    artifacts: Sequence[str],
    config_path: str,
) -> dict[str, Any]:
    """Settings for ``ConfigWorkflow(tracking=...)``: MONAI's ``DEFAULT_MLFLOW_SETTINGS`` with medfcn's
    handler, params, tags and artifacts (the trainer's handler logs them; the validator's logs the
    validation metrics into the same run)."""
    import copy

    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings: dict[str, Any] = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    cfg: dict[str, Any] = settings["configs"]
    cfg["tracking_uri"] = tracking_uri
    cfg["experiment_name"] = experiment
    cfg["run_name"] = run_name
    cfg["save_execute_config"] = config_path
    for key in ("trainer", "validator", "evaluator"):
        cfg[key]["_target_"] = "medfcn.tracking.MlflowRunHandler"
        if run_id:
            cfg[key]["run_id"] = run_id
    cfg["trainer"]["experiment_param"] = dict(params)
    cfg["trainer"]["tags"] = dict(tags)
    cfg["trainer"]["artifacts"] = [config_path, *artifacts]
    # Per-epoch, not per-iteration, training loss: fewer rows, the same curve.
    cfg["trainer"]["iteration_log"] = False
    cfg["trainer"]["epoch_loss"] = True
    cfg["validator"]["tags"] = {}
    # The trainer's handler closes the run when training completes; the validator's must not close it
    # after the first validation.
    cfg["validator"]["close_on_complete"] = False
    return settings


def find_run_id(info: Mapping[str, Any]) -> str | None:
    """The id of the latest run named ``info["run_name"]`` in ``info["experiment"]`` (``None`` if absent)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=info["tracking_uri"])
        exp = client.get_experiment_by_name(info["experiment"])
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.run_name = '{info['run_name']}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception:  # tracking is a record, not a result: a lookup failure must not fail the training
        return None


class RunTracker:
    """The MLflow side of one training run: where it logs, under which names, and its run id once known.

    Made by :func:`start_tracking`, which records the store and names in ``<output_dir>/tracking.json``.

    Attributes:
        output_dir: the run folder.
        bundle_name: the bundle's name (a tag).
        tracking_uri: the MLflow store or server (with any credentials; :func:`redact_uri` before showing it).
        experiment: the MLflow experiment name.
        run_name: the MLflow run name (a resumed run keeps its name).
        run_id: the MLflow run id: the recorded one on resume, else ``None`` until :meth:`finish`.
        config_path: where :meth:`record_config` writes the executed config (an artifact of the run).
    """

    def __init__(self, output_dir: str | os.PathLike[str], bundle_name: str, info: Mapping[str, Any]) -> None:
        self.output_dir = Path(output_dir)
        self.bundle_name = bundle_name
        self.tracking_uri = str(info["tracking_uri"])
        self.experiment = str(info["experiment"])
        self.run_name = str(info["run_name"])
        self.run_id: str | None = info.get("run_id")
        self.config_path = self.output_dir / "config_executed.json"

    def settings(
        self, *, params: Mapping[str, Any], metadata: Mapping[str, Any], data_dir: Path, artifacts: Sequence[str]
    ) -> dict[str, Any] | None:
        """``ConfigWorkflow(tracking=...)`` settings for this run (see :func:`mlflow_settings`): ``params``
        flattened, the tags of :func:`run_tags`, the executed config and ``artifacts`` logged at the end."""
        return mlflow_settings(
            tracking_uri=self.tracking_uri,
            experiment=self.experiment,
            run_name=self.run_name,
            run_id=self.run_id,
            params=flatten_params(params),
            tags=run_tags(self.bundle_name, metadata, data_dir),
            artifacts=artifacts,
            config_path=str(self.config_path),
        )

    def record_config(self, config: Mapping[str, Any]) -> None:
        """Write the executed config, every macro resolved (what actually ran), for the run's artifacts."""
        atomic_write_json(self.config_path, config)

    def finish(self) -> str | None:
        """Look up the run id once the run has ended and record it in ``tracking.json`` (for ``--resume``)."""
        info = {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "run_name": self.run_name}
        run_id = find_run_id(info)
        if run_id:
            record_run_id(self.output_dir, run_id)
            self.run_id = run_id
        return run_id


class NoTracking:
    """The tracker of a run that is not tracked (a null :class:`RunTracker`): no store, no names, no
    settings, nothing written."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_id: str | None = None

    def settings(
        self, *, params: Mapping[str, Any], metadata: Mapping[str, Any], data_dir: Path, artifacts: Sequence[str]
    ) -> dict[str, Any] | None:
        """No settings: ``ConfigWorkflow`` then adds no MLflow handler."""
        return None

    def record_config(self, config: Mapping[str, Any]) -> None:
        """Nothing to record."""

    def finish(self) -> str | None:
        """Nothing to look up."""
        return None


def start_tracking(
    enabled: bool,
    output_dir: str | os.PathLike[str],
    *,
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None,
    bundle_name: str,
    resume: bool,
) -> RunTracker | NoTracking:
    """The tracker of a training run, or a :class:`NoTracking` when ``enabled`` is false (tracking off, or a
    torchrun rank other than 0).

    A :class:`RunTracker` has its store (``tracking_uri`` > ``$MLFLOW_TRACKING_URI`` > local SQLite), experiment
    and run name recorded in ``<output_dir>/tracking.json`` (credentials removed). A resumed run reuses the
    recorded run name and id (so MLflow continues the same run); a new run is named ``<bundle>-<UTC date-time>``.
    """
    if not enabled:
        return NoTracking()
    out = Path(output_dir)
    record = out / _RUN_FILE
    previous: dict[str, Any] = {}
    if resume and record.is_file():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(record.read_text(encoding="utf-8"))
    uri = tracking_uri or previous.get("tracking_uri") or default_tracking_uri()
    name = run_name or previous.get("run_name") or f"{bundle_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    info = {"tracking_uri": uri, "experiment": experiment, "run_name": name}
    if previous.get("run_id") and not run_name:
        info["run_id"] = previous["run_id"]
    atomic_write_json(record, {**info, "tracking_uri": redact_uri(uri)})
    return RunTracker(out, bundle_name, info)
