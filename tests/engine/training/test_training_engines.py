"""FCNTrainer / FCNEvaluator: autocast on any device, gradient clipping after unscaling, and a non-finite
gradient that skips the step (medfcn.engine.training.engines)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medfcn.engine.training import FCNTrainer, train
from medfcn.errors import InputError
from medfcn.runtime import autocast_dtype

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _liver_support import TINY_TRAINING, copy_liver_bundle


def test_autocast_dtype_rules() -> None:
    assert autocast_dtype("cpu", False) is None
    assert autocast_dtype("cpu", True, units=["AVX512-BF16"]) == torch.bfloat16
    assert autocast_dtype("cpu", True, units=[]) is None  # no bf16 units: emulated bf16 is slower, fp32
    assert autocast_dtype("cpu", True, "bf16", units=[]) == torch.bfloat16  # an explicit dtype forces it
    with pytest.raises(InputError, match=r"fp16.*CUDA"):
        autocast_dtype("cpu", True, "fp16")
    with pytest.raises(InputError, match="amp_dtype"):
        autocast_dtype("cpu", True, "int8")


def _tiny_trainer(**kwargs: object) -> FCNTrainer:
    net = torch.nn.Conv3d(1, 2, 1)
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.randint(0, 2, (1, 1, 4, 4, 4))}]

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # A huge loss, so clipping has something to clip.
        return 1e6 * torch.nn.functional.cross_entropy(pred, target[:, 0].long())

    return FCNTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=loss,
        **kwargs,  # type: ignore[arg-type]
    )


def test_gradients_are_clipped_after_the_backward_pass() -> None:
    trainer = _tiny_trainer(grad_clip_norm=1.0)
    trainer.run()
    norm = torch.norm(torch.stack([p.grad.norm() for p in trainer.network.parameters()]))
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
    unclipped = _tiny_trainer(grad_clip_norm=None)
    unclipped.run()
    norm = torch.norm(torch.stack([p.grad.norm() for p in unclipped.network.parameters()]))
    assert float(norm) > 10.0


def test_cpu_bf16_autocast_runs_the_forward_pass_in_bf16() -> None:
    trainer = _tiny_trainer(amp=True, amp_dtype="bf16", grad_clip_norm=1.0)  # forced: any CPU runs it
    seen: list[torch.dtype] = []
    trainer.network.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.run()
    assert trainer.scaler is None  # bf16 needs no loss scaling
    assert seen == [torch.bfloat16]
    assert all(torch.isfinite(p.grad).all() for p in trainer.network.parameters())


@pytest.mark.cuda
def test_cuda_fp16_uses_a_grad_scaler_and_unscales_before_clipping() -> None:
    net = torch.nn.Conv3d(1, 2, 1).cuda()
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.randint(0, 2, (1, 1, 4, 4, 4))}]
    trainer = FCNTrainer(
        device=torch.device("cuda"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda p, t: torch.nn.functional.cross_entropy(p.float(), t[:, 0].long()),
        amp=True,
        amp_dtype="fp16",
        grad_clip_norm=0.5,
    )
    seen: list[torch.dtype] = []
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.run()
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert set(seen) == {torch.float16}
    norm = torch.norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert float(norm) <= 0.5 * 1.001 * trainer.scaler.get_scale() or float(norm) <= 0.5 * 1.001


@pytest.mark.cuda
def test_cuda_training_of_the_bundle_with_amp(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    result = train(
        bundle, data_dir=synthetic_dataset, epochs=2, device="cuda", amp=True, tracking=False, quiet=True,
        overrides=TINY_TRAINING,
    )  # fmt: skip
    assert result.metrics["epochs"] == 2 and result.model_path.is_file()


def test_a_non_finite_gradient_skips_the_step_instead_of_poisoning_the_weights() -> None:
    net = torch.nn.Conv3d(1, 2, 1)
    before = [p.detach().clone() for p in net.parameters()]
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.zeros(1, 1, 4, 4, 4)}]
    trainer = FCNTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda p, t: (p * float("nan")).sum(),
        grad_clip_norm=12.0,
    )
    trainer.run()
    assert trainer.skipped_steps == 1
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
