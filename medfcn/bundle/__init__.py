"""MONAI bundles: :class:`Bundle` is the one door into a bundle folder (its files, its parsed configs, its
weights, classes, segment codes, channels and patch size); ``export`` makes TorchScript/ONNX of it.

Everything that reads a bundle goes through :func:`load_bundle`: :class:`medfcn.engine.segmenter.Segmenter`,
:func:`medfcn.bundle.export.export_bundle`, :func:`save_random_weights`, ``medfcn info``. The configs are
parsed by :meth:`Bundle.parser` the way ``python -m monai.bundle run`` parses them: ``metadata.json`` as
``_meta_``, the config files merged in order, overrides (``{"id#key": value}``) set before anything is
built, and ``%configs/x.json#id`` macros resolved from the bundle root.

Example:
    >>> b = load_bundle("bundles/liver")  # doctest: +SKIP
    >>> b.name, b.version, b.class_names, b.weights_file, b.in_channels, b.patch_size  # doctest: +SKIP
    >>> parser = b.parser("inference", {"device": "$torch.device('cpu')"})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfcn._io import atomic_write, atomic_write_json
from medfcn.bundle.standard import channel_def, neutralise_writers
from medfcn.errors import BundleError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from monai.bundle import ConfigParser

    from medfcn.data.segment_codes import ClassInfo

__all__ = [
    "RUN_OUTPUTS",
    "Bundle",
    "apply_overrides",
    "channel_updates",
    "copy_bundle",
    "load_bundle",
    "save_random_weights",
    "set_in_channels",
    "set_patch_size",
    "working_directory",
]

RUN_OUTPUTS = ("runs", "eval", "logs", "mlruns", "__pycache__")
"""Folders that runs of a bundle create inside it (checkpoints, evaluations, logs, a local MLflow store)."""

_CONFIGS = ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf")
_SUFFIXES = (".json", ".yaml", ".yml")  # zoo bundles may ship YAML configs


@contextlib.contextmanager
def working_directory(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block from ``path``: MONAI resolves ``%configs/x.json#id`` macros relative to the working
    directory, and bundles are written to be run from their root (as ``python -m monai.bundle run`` is)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def apply_overrides(parser: ConfigParser, overrides: Mapping[str, Any]) -> None:
    """Set ``{"id#key": value}`` in ``parser``, in order, skipping those whose top-level id it lacks."""
    for key, value in overrides.items():
        if key.split("#")[0] in parser:
            parser[key] = value


def _has_macro(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith("%")
    if isinstance(value, Mapping):
        return any(_has_macro(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_macro(v) for v in value)
    return False


@dataclass(frozen=True)
class Bundle:
    """A bundle folder: its files as found (nothing is instantiated and no weights are read until asked).

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
        """Output channel -> class name, from ``network_data_format.outputs.pred.channel_def`` (``{}``: none)."""
        return channel_def(self.metadata)

    @property
    def weights_file(self) -> Path | None:
        """The weights a run uses: ``models/model.pt``, else ``models/model.ts``, else ``None``."""
        from medfcn.bundle.weights import find_weights

        return find_weights(self.root)

    @property
    def in_channels(self) -> int | None:
        """Input channels the network takes (metadata ``network_data_format.inputs.image.num_channels``)."""
        try:
            return int(self.metadata["network_data_format"]["inputs"]["image"]["num_channels"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def patch_size(self) -> tuple[int, ...] | None:
        """The sliding-window patch: the inference config's ``patch_size``, else the metadata's input
        ``spatial_shape`` (:func:`set_patch_size` keeps the two equal), else ``None``."""
        config = self.configs.get("inference.json")
        candidates: list[Any] = []
        if config is not None:
            with contextlib.suppress(OSError, ValueError):
                raw = json.loads(config.read_text(encoding="utf-8"))
                candidates.append(raw.get("patch_size") if isinstance(raw, dict) else None)
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        candidates.append(inputs.get("image", {}).get("spatial_shape") if isinstance(inputs, dict) else None)
        for value in candidates:
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
                return tuple(int(v) for v in value)
        return None

    def trained_flips(self, spatial_dims: int = 3) -> tuple[int, ...] | None:
        """The spatial axes ``configs/train.json`` flips (``RandFlipd``/``RandAxisFlipd``), or ``None``
        without a readable train.json (a bundle shipped for inference only)."""
        try:
            config = json.loads((self.root / "configs" / "train.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        axes: set[int] = set()
        stack: list[Any] = [config]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
                axis = node.get("spatial_axis")
                if name in ("RandAxisFlipd", "RandAxisFlip") or (name in ("RandFlipd", "RandFlip") and axis is None):
                    axes.update(range(spatial_dims))
                elif name in ("RandFlipd", "RandFlip"):
                    listed = axis if isinstance(axis, list) else [axis]
                    axes.update(a for a in listed if isinstance(a, int))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return tuple(sorted(a for a in axes if 0 <= a < spatial_dims))

    def segment_codes(self, class_names: Mapping[int, str] | None = None) -> dict[int, ClassInfo]:
        """Foreground label value -> name and DICOM codes (:func:`medfcn.data.segment_codes.class_table`).

        Raises:
            BundleError: malformed ``medfcn.classes`` metadata.
        """
        from medfcn.data.segment_codes import class_table

        return class_table(self.metadata, class_names)

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

    # -- configs
    def config_file(self, name: str | os.PathLike[str] = "inference") -> Path:
        """The path of a config: ``"inference"`` (``configs/inference.json``, ``.yaml`` or ``.yml``),
        ``"train.json"`` (in ``configs/``) or a bundle-relative path such as ``"configs/inference.json"``.

        Raises:
            BundleError: no such file.
        """
        text = str(name)
        if "/" in text or os.sep in text:
            path = self.root / text
        elif Path(text).suffix in _SUFFIXES:
            path = self.root / "configs" / text
        else:
            path = next(
                (self.root / "configs" / f"{text}{s}" for s in _SUFFIXES if (self.root / "configs" / f"{text}{s}").is_file()),
                self.root / "configs" / f"{text}.json",
            )
        if not path.is_file():
            raise BundleError(f"{path}: config file not found in the bundle {self.root}")
        return path

    def parser(
        self,
        configs: str | Sequence[str] = "inference",
        overrides: Mapping[str, Any] | None = None,
        *,
        macros: bool = True,
        writers: bool = False,
    ) -> ConfigParser:
        """A MONAI ``ConfigParser`` of ``configs`` (merged in order) with ``metadata.json`` as ``_meta_``.

        Args:
            configs: config name(s), see :meth:`config_file`.
            overrides: ``{"id#key": value}`` set before anything is parsed; one whose top-level id the
                config lacks is skipped (a bundle without a ``device`` id has nothing to point at it).
            macros: resolve ``%configs/x.json#id`` macros now, from the bundle root.
            writers: keep ``SaveImaged``/``SaveImage`` in ``postprocessing`` (by default they become
                ``Identityd``: they would write files wherever the bundle's ``output_dir`` points).

        Raises:
            BundleError: a config is missing or is not a valid JSON/YAML object.
        """
        from monai.bundle.config_parser import ConfigParser

        files = [self.config_file(c) for c in ([configs] if isinstance(configs, (str, os.PathLike)) else configs)]
        parser = ConfigParser()
        try:
            parser.read_meta(str(self.root / "configs" / "metadata.json"))
            parser.read_config([str(f) for f in files] if len(files) > 1 else str(files[0]))
        except (AttributeError, TypeError):  # MONAI merges files with dict methods: not an object
            raise BundleError(f"{files[0]}: expected a JSON object at the top level") from None
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read {files[0]}: {one_line(err)}") from err
        if not isinstance(parser.get(), dict):
            raise BundleError(f"{files[0]}: expected a JSON object at the top level")
        if not writers:
            neutralise_writers(parser)
        apply_overrides(parser, overrides or {})
        if macros and _has_macro(parser.get()):
            with working_directory(self.root):
                parser.resolve_macro_and_relative_ids()
        return parser

    def config(self, configs: str | Sequence[str] = "inference", *, macros: bool = True) -> dict[str, Any]:
        """The merged content of ``configs`` as a plain dict (a copy, without ``_meta_``; writers kept).

        With ``macros`` it is self-contained (what an export embeds); without, it is the files' text.
        """
        config = copy.deepcopy(self.parser(configs, macros=macros, writers=True).get())
        config.pop("_meta_", None)
        return config

    def working_directory(self) -> contextlib.AbstractContextManager[None]:
        """Run the block from the bundle root (where its macros and relative paths resolve)."""
        return working_directory(self.root)


def load_bundle(path: str | os.PathLike[str] | Bundle) -> Bundle:
    """Describe the bundle at ``path`` (a :class:`Bundle` is returned as it is).

    Raises:
        BundleError: not a folder, no ``configs/metadata.json`` or inference config, invalid JSON.
    """
    if isinstance(path, Bundle):
        return path
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise BundleError(f"{path}: not a folder; a bundle is a folder with configs/ and models/")
    configs = {name: root / "configs" / name for name in _CONFIGS if (root / "configs" / name).is_file()}
    for suffix in _SUFFIXES[1:]:
        if "inference.json" not in configs and (root / "configs" / f"inference{suffix}").is_file():
            configs[f"inference{suffix}"] = root / "configs" / f"inference{suffix}"
    if not any(name.startswith("inference.") for name in configs):
        raise BundleError(f"{root / 'configs' / 'inference.json'} not found: {path} is not a medfcn/MONAI bundle folder")
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{meta_file} not found: {path} is not a medfcn/MONAI bundle folder")
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{meta_file}: not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise BundleError(f"{meta_file}: expected a JSON object")
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


def save_random_weights(path: str | os.PathLike[str] | Bundle, seed: int = 0) -> Path:
    """Write ``models/model.pt`` with the seeded random initial weights of the bundle's ``network_def``.

    For what does not depend on weight values: speed and memory benchmarks, and tests of the plumbing
    (loading, sliding window, inversion, outputs). A bundle with such weights segments nothing useful.

    Returns:
        The path of the written ``model.pt``.
    """
    import torch

    bundle = load_bundle(path)
    parser = bundle.parser("inference", {"bundle_root": str(bundle.root), "device": "$torch.device('cpu')"})
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
