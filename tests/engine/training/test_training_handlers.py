"""The training handlers: MetricsWriter and TimeBudget (medfcn.engine.training.handlers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from medfcn.engine.training import MetricsWriter, TimeBudget
from medfcn.errors import InputError


def test_metrics_writer_keeps_history_of_a_resumed_run(tmp_path: Path) -> None:
    from ignite.engine import Engine

    trainer, evaluator = Engine(lambda e, b: {"loss": 0.5}), Engine(lambda e, b: None)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"history": [{"epoch": 1, "val_mean_dice": 0.2}, {"epoch": 9, "val_mean_dice": 0.9}]}))
    writer = MetricsWriter(path, evaluator, class_names=["liver"], resume=True)
    writer.attach(trainer)
    trainer.state.epoch = 2  # a run resumed after epoch 2: the stale epoch-9 row goes
    writer._started(trainer)
    assert [r["epoch"] for r in writer.history] == [1]


def test_time_budget_ends_the_run_on_time_with_the_schedule_at_its_end() -> None:
    from ignite.engine import Engine

    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=1000, power=1.0)
    engine = Engine(lambda e, b: time.sleep(0.02))
    from ignite.engine import Events

    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())  # as LrScheduleHandler does
    lrs: list[float] = []
    TimeBudget(0.5, sched).attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    t0 = time.perf_counter()
    engine.run(range(5), max_epochs=1000)  # about 0.1 s an epoch
    elapsed = time.perf_counter() - t0
    assert 2 <= engine.state.epoch <= 8 and elapsed < 1.0
    assert engine.state.max_epochs == engine.state.epoch
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5  # decays to its floor at the planned end
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InputError, match="positive"):
        TimeBudget(0)
