"""A bundle's weights in every form the MONAI model zoo ships them, read one way.

The zoo's bundles carry ``models/model.pt`` as a bare ``state_dict`` (``spleen_ct_segmentation``), as a
checkpoint dict holding it under ``"model"`` (what MONAI's ``CheckpointSaver`` writes with
``save_dict={"model": net}``), or carry only a TorchScript ``models/model.ts``. Weights saved from a
``DistributedDataParallel`` network have every key prefixed ``module.``; the prefix is removed.

Example:
    >>> from medfcn.bundle.weights import find_weights
    >>> find_weights("bundles/liver")  # doctest: +SKIP
    PosixPath('.../bundles/liver/models/model.pt')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfcn.errors import BundleError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["WEIGHT_FILES", "as_state_dict", "find_weights", "load_network", "no_weights_error", "read_state_dict"]

WEIGHT_FILES = ("model.pt", "model.ts")
"""The weight files a bundle's ``models/`` may hold, in the order they are preferred."""

_CHECKPOINT_KEYS = ("model", "network", "state_dict", "net")


def find_weights(bundle: str | os.PathLike[str]) -> Path | None:
    """``models/model.pt`` if present, else ``models/model.ts``, else ``None``."""
    models = Path(bundle) / "models"
    for name in WEIGHT_FILES:
        if (models / name).is_file():
            return models / name
    return None


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def as_state_dict(obj: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The network ``state_dict`` inside what ``torch.load`` returned for ``path``.

    Accepts a bare state dict, or a checkpoint dict with it under ``model``/``network``/``state_dict``/
    ``net`` (other entries such as the optimizer are ignored). A ``module.`` prefix on every key (a
    network saved while wrapped in ``DistributedDataParallel``) is dropped.

    Raises:
        BundleError: no state dict found (the message lists the top-level keys seen).
    """
    state: Any = None
    if _is_tensor_dict(obj):
        state = obj
    elif isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if _is_tensor_dict(obj.get(key)):
                state = obj[key]
                break
    if state is None:
        seen = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise BundleError(
            f"{path} holds no state dict of network weights (found {seen}); expected a state_dict or "
            f"a checkpoint with one under {' / '.join(repr(k) for k in _CHECKPOINT_KEYS)}"
        )
    out = dict(state)
    if out and all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return out


def read_state_dict(path: str | os.PathLike[str], key: str = "") -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)`` and return its network state dict.

    Args:
        path: a ``.pt`` file.
        key: the entry of a checkpoint dict that holds the weights; ``""`` finds it (:func:`as_state_dict`).

    Raises:
        BundleError: missing/unreadable file, no such key, or no state dict inside.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: no weights file; train the bundle (medfcn train) or fetch its weights "
                          "(medfcn bundle download)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a pickle of a whole module: say which file
        raise BundleError(
            f"{p} is not a readable PyTorch weights file ({type(err).__name__}: {one_line(err)[:200]})"
        ) from err
    if key:
        if not isinstance(obj, Mapping) or key not in obj:
            raise BundleError(f"{p}: checkpoint has no key {key!r}")
        obj = obj[key]
    return as_state_dict(obj, p)


def load_network(
    bundle_root: Path,
    build: Callable[[], torch.nn.Module],
    device: torch.device,
    config_file: Path,
) -> tuple[torch.nn.Module, str]:
    """The bundle's network with its weights on ``device``, and the weights file used (bundle-relative).

    ``models/model.pt`` (any form of :func:`as_state_dict`) is loaded into ``build()`` (the bundle's
    ``network_def``); without it, ``models/model.ts`` is loaded as TorchScript and ``build`` is not called.

    Raises:
        BundleError: no weights, unreadable weights, or weights that do not fit ``network_def``.
    """
    import torch

    pt, ts = bundle_root / "models" / "model.pt", bundle_root / "models" / "model.ts"
    if pt.is_file():
        state = read_state_dict(pt)
        try:
            net = build()
        except Exception as err:  # MONAI wraps config errors; the innermost cause says what is wrong
            cause: BaseException = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise BundleError(
                f"{config_file}: cannot build the network: {type(cause).__name__}: {one_line(cause)}"
            ) from err
        mismatched = _shape_mismatches(net, state)
        result = net.load_state_dict(
            {k: v for k, v in state.items() if not any(m.startswith(f"{k}: ") for m in mismatched)}, strict=False
        )
        if result.missing_keys or result.unexpected_keys or mismatched:
            raise BundleError(
                f"{pt} does not match the network_def of {config_file}: "
                f"{len(result.missing_keys)} missing key(s) (e.g. {result.missing_keys[:2]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}), "
                f"{len(mismatched)} of another shape (e.g. {mismatched[:1]}); retrain or export the bundle again"
            )
        return net.to(device), str(pt.relative_to(bundle_root))
    if ts.is_file():
        try:
            module = torch.jit.load(str(ts), map_location=device)
        except Exception as err:  # not TorchScript, or truncated
            raise BundleError(f"{ts} is not a readable TorchScript model: {one_line(err)[:200]}") from err
        return module, str(ts.relative_to(bundle_root))
    raise no_weights_error(bundle_root)


def no_weights_error(bundle_root: Path) -> BundleError:
    """The one-line error for a bundle without ``models/model.pt`` or ``models/model.ts``."""
    return BundleError(
        f"{bundle_root} has no weights (models/model.pt or models/model.ts); train it first "
        "(medfcn train), fetch them (medfcn bundle download, from large_files.yml) or point --bundle at a "
        "trained bundle"
    )


def _shape_mismatches(net: torch.nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Keys whose tensor shape differs (``load_state_dict(strict=False)`` raises on them; report first)."""
    own = net.state_dict()
    return [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
