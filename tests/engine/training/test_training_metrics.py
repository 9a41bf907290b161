"""ClassDice: the Dice of one class as an ignite metric (medfcn.engine.training.metrics)."""

from __future__ import annotations

import pytest
import torch

from medfcn.engine.training import ClassDice


def test_class_dice_counts_empty_class_as_perfect() -> None:
    metric = ClassDice(channel=1, output_transform=lambda x: x)
    metric.reset()
    pred = torch.zeros(3, 4, 4, 4)
    label = torch.zeros(3, 4, 4, 4)
    pred[1, :2] = 1  # 32 voxels predicted
    label[1, :1] = 1  # 16 voxels true, all inside the prediction
    empty = torch.zeros(3, 4, 4, 4)
    metric.update(([pred, empty], [label, empty]))
    assert metric.compute() == pytest.approx((2 * 16 / 48 + 1.0) / 2)
