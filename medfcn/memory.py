"""Memory pages for large tensors: whether PyTorch's CPU allocator uses transparent huge pages.

``import medfcn`` sets ``THP_MEM_ALLOC_ENABLE=1`` (unless it is set) before PyTorch's first large
allocation; :func:`huge_pages` says what is in force, for ``medfcn info`` and ``run.json``. Why:
``benchmarks/README.md`` (a fresh 0.94 GB tensor 0.45 s of page faults with 4 KiB pages, 0.12 s with 2 MiB).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["huge_pages"]


def huge_pages() -> str:
    """Whether large tensors get transparent huge pages: PyTorch's ``THP_MEM_ALLOC_ENABLE`` (``import
    medfcn`` sets it to 1 unless it is set) and the kernel's THP mode, e.g. ``"on (kernel THP: madvise)"``."""
    requested = os.environ.get("THP_MEM_ALLOC_ENABLE", "0").strip().lower() in ("1", "true", "yes", "on")
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        return "unknown: no transparent huge pages on this system"
    if mode == "never":
        return "off (kernel THP: never)"
    if mode == "always":
        return "on (kernel THP: always)"
    return f"{'on' if requested else 'off: THP_MEM_ALLOC_ENABLE=0'} (kernel THP: {mode})"
