"""MONAI bundles: read a bundle folder's identity without loading weights, export it (``export``).

Example:
    >>> b = load_bundle("bundles/liver")  # doctest: +SKIP
    >>> b.name, b.version, b.class_names, b.weights  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfcn._io import atomic_write, atomic_write_json
from medfcn.errors import BundleError

__all__ = [
    "RUN_OUTPUTS",
    "Bundle",
    "channel_updates",
    "copy_bundle",
    "load_bundle",
    "save_random_weights",
    "set_in_channels",
    "set_patch_size",
]

RUN_OUTPUTS = ("runs", "eval", "logs", "mlruns", "__pycache__")
"""Folders that runs of a bundle create inside it (checkpoints, evaluations, logs, a local MLflow store)."""

_CONFIGS = ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf")


@dataclass(frozen=True)
class Bundle:
    """A bundle folder as described by its files (nothing is instantiated, no weights are read).

    Attributes:
        root: the bundle folder.
        metadata: ``configs/metadata.json``.
        configs: config file name -> path, for the standard configs present.
        weights: ``models/model.pt`` / ``models/model.ts`` / ``models/model.onnx`` that exist.
    """

    root: Path
    metadata: dict[str, Any]
    configs: dict[str, Path] = field(default_factory=dict)
    weights: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.root.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def class_names(self) -> dict[int, str]:
        """Output channel -> class name, from ``network_data_format.outputs.pred.channel_def``."""
        try:
            channel_def = self.metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
            return {int(k): str(v) for k, v in channel_def.items()}
        except (KeyError, TypeError, ValueError):
            return {}

    @property
    def stale_exports(self) -> list[str]:
        """Exports (``model.ts``, ``model.onnx``) made from other weights than the current ``model.pt``: the
        sha256 that ``medfcn export`` recorded in ``metadata.json`` differs from ``model.pt``'s (a training
        replaced the weights since). Reads ``model.pt`` once to hash it."""
        exports: list[str] = [n for n in ("model.ts", "model.onnx") if n in self.weights]
        if not exports or "model.pt" not in self.weights:
            return []
        from medfcn._io import file_sha256

        if self.metadata.get("medfcn_weights_sha256") == file_sha256(self.weights["model.pt"]):
            return []
        return exports

    @property
    def trained(self) -> bool:
        """Whether the bundle has weights to run (``model.pt`` or ``model.ts``)."""
        return "model.pt" in self.weights or "model.ts" in self.weights


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Describe the bundle at ``path``.

    Raises:
        BundleError: not a folder, no ``configs/metadata.json`` or ``configs/inference.json``, invalid JSON.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise BundleError(f"{path}: not a folder; a bundle is a folder with configs/ and models/")
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{meta_file} not found: {path} is not a MONAI bundle")
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{meta_file}: not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise BundleError(f"{meta_file}: expected a JSON object")
    configs = {name: root / "configs" / name for name in _CONFIGS if (root / "configs" / name).is_file()}
    if "inference.json" not in configs:
        raise BundleError(f"{root / 'configs' / 'inference.json'} not found: a medfcn bundle needs it")
    weights = {
        name: root / "models" / name
        for name in ("model.pt", "model.ts", "model.onnx")
        if (root / "models" / name).is_file()
    }
    return Bundle(root=root, metadata=metadata, configs=configs, weights=weights)


def set_patch_size(path: str | os.PathLike[str], patch_size: tuple[int, ...] | list[int]) -> None:
    """Change the bundle's patch size where it is defined, for training **and** inference.

    ``patch_size`` lives once, in ``configs/inference.json`` (``train.json`` takes it by macro); the
    metadata's ``spatial_shape`` follows. Overriding it for training alone would make inference use
    another window than the network was trained on, which instance-normalised networks do not tolerate.

    Raises:
        BundleError: not a bundle, or a patch that is not three positive ints.
    """
    bundle = load_bundle(path)
    patch = [int(p) for p in patch_size]
    if len(patch) != 3 or min(patch) < 1:
        raise BundleError(f"patch_size must be three positive ints, got {list(patch_size)}")
    infer_file = bundle.configs["inference.json"]
    config = json.loads(infer_file.read_text(encoding="utf-8"))
    config["patch_size"] = patch
    meta = dict(bundle.metadata)
    for group in ("inputs", "outputs"):
        for tensor in meta.get("network_data_format", {}).get(group, {}).values():
            if isinstance(tensor, dict) and "spatial_shape" in tensor:
                tensor["spatial_shape"] = patch
    atomic_write_json(infer_file, config, indent=4)
    atomic_write_json(bundle.root / "configs" / "metadata.json", meta, indent=4)


def copy_bundle(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, weights: bool = False
) -> Path:
    """Copy a bundle folder to ``dest`` (which must not exist) without what runs left in it.

    The configs, metadata, docs and any other files are copied; the :data:`RUN_OUTPUTS` folders are not,
    and ``models/`` is copied only with ``weights=True`` (otherwise it is created empty, ready for a
    training run). The source is only read.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        BundleError: ``source`` is not a bundle.
    """
    import shutil

    src = load_bundle(source).root
    out = Path(dest)
    skip = RUN_OUTPUTS if weights else (*RUN_OUTPUTS, "models")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(*skip))
    (out / "models").mkdir(exist_ok=True)
    return out


def save_random_weights(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write ``models/model.pt`` with the seeded random initial weights of the bundle's ``network_def``.

    For what does not depend on weight values: speed and memory benchmarks, and tests of the plumbing
    (loading, sliding window, inversion, outputs). A bundle with such weights segments nothing useful.

    Returns:
        The path of the written ``model.pt``.
    """
    import torch
    from monai.bundle import ConfigParser

    bundle = load_bundle(path)
    parser = ConfigParser()
    parser.read_meta(str(bundle.root / "configs" / "metadata.json"))
    parser.read_config(str(bundle.configs["inference.json"]))
    parser["bundle_root"] = str(bundle.root)
    parser["device"] = "$torch.device('cpu')"
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def", lazy=False)
    target = bundle.root / "models" / "model.pt"
    target.parent.mkdir(exist_ok=True)
    atomic_write(target, lambda tmp: torch.save(net.state_dict(), tmp))
    return target


def _network_def(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inference.json as a dict, its network_def dict) of ``bundle``."""
    infer_file = bundle.configs["inference.json"]
    try:
        config = json.loads(infer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{infer_file}: not valid JSON ({err})") from err
    net = config.get("network_def") if isinstance(config, dict) else None
    if not isinstance(net, dict):
        raise BundleError(f"{infer_file}: no 'network_def' object; a MONAI bundle defines its network there")
    return config, net


def channel_updates(path: str | os.PathLike[str], in_channels: int) -> dict[str, Any]:
    """Config overrides that train the bundle's network on ``in_channels`` input channels.

    Returns ``{}`` when ``network_def`` already has that many; else ``{"network_def": <inference.json's
    network_def with in_channels replaced>}`` (train.json takes network_def by macro, so the whole
    definition is overridden).
    """
    _, net = _network_def(load_bundle(path))
    if net.get("in_channels") == int(in_channels):
        return {}
    return {"network_def": {**net, "in_channels": int(in_channels)}}


def set_in_channels(path: str | os.PathLike[str], in_channels: int) -> bool:
    """Write ``in_channels`` into ``network_def`` of ``configs/inference.json`` and the metadata's input.

    After training on a dataset with another number of channels, inference must build the same network
    the weights were trained in. Both files are written atomically.

    Returns:
        Whether anything changed.
    """
    bundle = load_bundle(path)
    config, net = _network_def(bundle)
    n = int(in_channels)
    if net.get("in_channels") == n:
        return False
    net["in_channels"] = n
    meta = dict(bundle.metadata)
    image = meta.get("network_data_format", {}).get("inputs", {}).get("image")
    if isinstance(image, dict):
        image["num_channels"] = n
    atomic_write_json(bundle.configs["inference.json"], config, indent=4)
    atomic_write_json(bundle.root / "configs" / "metadata.json", meta, indent=4)
    return True
