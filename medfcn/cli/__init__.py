"""The ``medfcn`` command line: a thin typer layer over the library (one module per command group)."""

from __future__ import annotations

__all__: list[str] = []
