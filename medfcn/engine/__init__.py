"""Training, evaluation and inference engines built from MONAI's engines, inferers and handlers."""

from __future__ import annotations

__all__: list[str] = []
