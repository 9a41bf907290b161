"""medfcn: Fully Convolutional Networks for CT and MR segmentation, built on MONAI and PyTorch.

The names users type are re-exported here and imported lazily, so that ``import medfcn`` (and the
``medfcn --help`` command) stays fast and does not load PyTorch until a network or a model is needed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from medfcn._version import __version__

# Large PyTorch tensors on transparent huge pages (the CPU allocator reads this once, at its first large
# allocation, so it must be set before then; numpy does the same by itself). On a 2-core VM a fresh 0.94 GB
# tensor cost 0.45 s of page faults with 4 KiB pages and 0.12 s with 2 MiB pages, and a whole `medfcn infer` of
# a 512x512x300 CT went from 27.3 to 24.5 s (benchmarks/README.md). THP_MEM_ALLOC_ENABLE=0 opts out;
# `medfcn info` shows what is in force (medfcn.memory.huge_pages).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
