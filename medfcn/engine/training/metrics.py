"""Per-class Dice as an ignite metric, so the Dice of each class (not only the mean) reaches StatsHandler,
``metrics.json`` and MLflow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from monai.handlers import from_engine
from monai.utils.enums import CommonKeys as Keys

__all__ = ["ClassDice"]


class ClassDice(Metric):
    """Mean Dice of one class over the cases of an evaluation (an ignite metric).

    Expects the decollated, one-hot ``pred``/``label`` of MONAI's postprocessing (``AsDiscreted`` with
    ``to_onehot``). A case where the class is absent from both scores 1 (nothing to find, nothing found),
    so an empty tumour class does not read as a failure. Averaged over all ranks under DDP.

    Args:
        channel: the class index (one-hot channel).
        output_transform: engine output -> ``(preds, labels)`` lists.
    """

    def __init__(
        self,
        channel: int,
        output_transform: Callable = from_engine([Keys.PRED, Keys.LABEL]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.channel = int(channel)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        for p, g in zip(preds, labels, strict=False):
            p_c = torch.as_tensor(p)[self.channel].bool()
            g_c = torch.as_tensor(g)[self.channel].bool()
            denom = int(p_c.sum()) + int(g_c.sum())
            self._sum += 1.0 if denom == 0 else 2.0 * int((p_c & g_c).sum()) / denom
            self._count += 1

    def compute(self) -> float:
        total = torch.tensor([self._sum, float(self._count)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")


