"""medfcn: Fully Convolutional Networks for CT and MR segmentation, built on MONAI and PyTorch.

The names users type are re-exported here and imported lazily, so that ``import medfcn`` (and the
``medfcn --help`` command) stays fast and does not load PyTorch until a network or a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medfcn._version import __version__

# name -> module that defines it
_LAZY = {
    "FCN": "medfcn.networks",
    "convolutionalise": "medfcn.networks",
    "inflate_2d_to_3d": "medfcn.networks",
    "find_cases": "medfcn.data",
    "load_bundle": "medfcn.bundle",
    "Segmenter": "medfcn.engine.segmenter",
    "segment_folder": "medfcn.engine.inference",
    "train": "medfcn.engine.training",
}

__all__ = [
    "FCN",
    "Segmenter",
    "__version__",
    "convolutionalise",
    "find_cases",
    "inflate_2d_to_3d",
    "load_bundle",
    "segment_folder",
    "train",
]

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.bundle import load_bundle
    from medfcn.data import find_cases
    from medfcn.engine.inference import segment_folder
    from medfcn.engine.segmenter import Segmenter
    from medfcn.engine.training import train
    from medfcn.networks import FCN, convolutionalise, inflate_2d_to_3d


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medfcn' has no attribute {name!r}")


assert set(__all__) == {"__version__", *_LAZY}  # one list of public names, kept in step
