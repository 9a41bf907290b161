"""The default liver recipe learns: a short CPU training on synthetic phantoms, scored on unseen phantoms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _liver_support import copy_liver_bundle

EPOCHS = 50
SHAPE = (96, 96, 64)  # at 1.5 x 1.5 x 2 mm, smaller phantoms leave too few voxels per organ for Dice 0.8


@pytest.mark.slow
def test_liver_dice_on_held_out_phantoms_exceeds_0_8(tmp_path: Path) -> None:
    from medfcn.data.synthetic import write_msd_dataset
    from medfcn.engine.evaluation import evaluate
    from medfcn.engine.training import train

    data = write_msd_dataset(tmp_path / "train", num_train=10, num_test=0, shape=SHAPE, seed=11)
    # Held out: phantoms of another seed, never seen in training or model selection.
    unseen = write_msd_dataset(tmp_path / "unseen", num_train=4, num_test=0, shape=SHAPE, seed=12345)
    bundle = copy_liver_bundle(tmp_path / "liver")
    result = train(
        bundle,
        data_dir=data,
        epochs=EPOCHS,
        val_interval=20,
        device="cpu",
        tracking=False,
        quiet=True,
        overrides={"num_workers": 0, "num_samples": 4},
    )
    history = result.metrics["history"]
    assert history[-1]["val_liver_dice"] > history[0]["val_liver_dice"]  # it learned, not merely started well
    scores = evaluate(bundle, unseen, split="all", device="cpu", progress=False)
    liver = next(s for s in scores.summary if s.class_name == "liver")
    print(f"held-out liver Dice {liver.dice_mean:.3f} ± {liver.dice_sd:.3f} after {EPOCHS} epochs, "
          f"{result.seconds:.0f} s; validation history {[round(r['val_liver_dice'], 3) for r in history]}")
    assert liver.n == 4 and not scores.failed
    assert liver.dice_mean > 0.8
