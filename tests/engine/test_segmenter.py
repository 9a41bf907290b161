"""Segmenter: the bundle's pipeline run once per scan, results in the scan's own geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _inference_support import (
    ThresholdNet,
    copy_bundle,
    hu_to_input,
    oblique_affine,
    sphere_volume,
    window,
    world_com,
)
from monai.data import MetaTensor

from medfcn.engine.probabilities import invert_by_channel
from medfcn.engine.segmenter import Prediction, Segmenter
from medfcn.errors import BundleError, InputError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_bundle(tmp_path_factory.mktemp("bundle") / "liver")


@pytest.fixture(scope="module")
def sphere_case(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> dict:
    """An oblique, anisotropic, axis-flipped volume with one bright sphere, saved as NIfTI."""
    probe = Segmenter(bundle, device="cpu", network=ThresholdNet(0.0, 1.0))
    lo, hi = window(probe)
    shape = (41, 35, 19)
    affine = oblique_affine((0.9, 1.3, 3.1))
    centre_voxel = np.array([22.3, 15.6, 10.2])
    centre = affine[:3, :3] @ centre_voxel + affine[:3, 3]
    sphere = sphere_volume(shape, affine, centre, radius_mm=11.0)
    image = np.where(sphere, hi + 100.0, lo - 100.0).astype(np.float32)
    path = tmp_path_factory.mktemp("sphere") / "sphere.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    # threshold half-way between the two (clipped) input values; class 2 never fires
    mid = 0.5 * (hu_to_input(probe, lo - 100.0) + hu_to_input(probe, hi + 100.0))
    return {"path": path, "image": image, "affine": affine, "sphere": sphere, "centre": centre, "t1": mid}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_oblique_anisotropic_sphere_lands_where_it_is(bundle: Path, sphere_case: dict) -> None:
    seg = Segmenter(bundle, device="cpu", network=ThresholdNet(sphere_case["t1"], 1e6))
    pred = seg(sphere_case["path"])
    assert isinstance(pred, Prediction)
    affine = sphere_case["affine"]
    assert tuple(pred.label.shape) == (1, *sphere_case["image"].shape)
    assert pred.label.dtype == torch.uint8
    np.testing.assert_allclose(pred.affine, affine, atol=1e-4)  # nibabel stores float32
    mask = pred.label[0].numpy() > 0
    assert set(np.unique(pred.label.numpy())) <= {0, 1}
    com = world_com(mask, affine)
    expected = world_com(sphere_case["sphere"], affine)
    voxel = 0.9  # the finest spacing
    assert np.linalg.norm(com - expected) < voxel, (com, expected)
    assert np.linalg.norm(com - sphere_case["centre"]) < voxel
    assert _dice(mask, sphere_case["sphere"]) > 0.9
    # the source image comes back on the same grid, in HU
    np.testing.assert_allclose(pred.image[0].numpy(), sphere_case["image"], atol=1e-3)


def test_in_memory_metatensor_matches_the_file(bundle: Path, sphere_case: dict) -> None:
    from monai.data import MetaTensor

    seg = Segmenter(bundle, device="cpu", network=ThresholdNet(sphere_case["t1"], 1e6))
    img = nib.load(sphere_case["path"])  # float32 affine, exactly what the file path gives
    mt = MetaTensor(torch.as_tensor(np.asarray(img.dataobj)), affine=torch.as_tensor(img.affine))
    from_file, from_memory = seg(sphere_case["path"]), seg(mt)
    np.testing.assert_allclose(from_memory.affine, from_file.affine, atol=1e-6)
    assert _dice(from_memory.label.numpy() > 0, from_file.label.numpy() > 0) > 0.98
    chan = seg(MetaTensor(torch.as_tensor(np.asarray(img.dataobj))[None], affine=torch.as_tensor(img.affine)))
    assert tuple(chan.label.shape) == tuple(from_file.label.shape)
    with pytest.raises(InputError, match=r"\(X, Y, Z\)"):
        seg(MetaTensor(torch.zeros(4, 4)))


def test_non_finite_check_reads_the_sum_first_and_counts_exactly_when_it_overflows() -> None:
    from medfcn.engine.segmenter import _replace_nonfinite

    huge = torch.full((4, 5, 6), 3.0e38)  # finite voxels whose float32 sum overflows to inf
    assert not torch.isfinite(huge.sum())
    assert _replace_nonfinite(huge, "huge.nii.gz") == 0 and torch.equal(huge, torch.full((4, 5, 6), 3.0e38))
    huge[1, 2, 3] = float("nan")
    huge[0, 0, 0] = float("-inf")
    assert _replace_nonfinite(huge, "huge.nii.gz") == 2
    assert torch.isfinite(huge).all() and float(huge[1, 2, 3]) == float(huge[0, 0, 0]) == float(huge[3, 4, 5])
    plain = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    plain[1, 1, 1] = float("inf")
    assert _replace_nonfinite(plain, "scan.nii.gz") == 1 and float(plain[1, 1, 1]) == 23.0
    assert _replace_nonfinite(torch.zeros(3, 3, dtype=torch.int16), "int.nii.gz") == 0


def test_non_finite_voxels_are_replaced_counted_and_not_spread(bundle: Path, sphere_case: dict) -> None:
    from monai.data import MetaTensor

    seg = Segmenter(bundle, device="cpu", network=ThresholdNet(sphere_case["t1"], 1e6))
    affine = torch.as_tensor(sphere_case["affine"])
    clean = seg(MetaTensor(torch.as_tensor(sphere_case["image"]), affine=affine))
    assert clean.nonfinite_voxels == 0
    bad = torch.as_tensor(sphere_case["image"]).clone()
    bad[0, 0, :] = float("nan")
    bad[1, 1, :] = float("inf")
    bad[22, 15, :] = float("-inf")  # a line through the sphere
    given = MetaTensor(bad.clone(), affine=affine)
    pred = seg(given)
    assert pred.nonfinite_voxels == 3 * bad.shape[2]
    assert torch.equal(torch.isnan(given.as_tensor()), torch.isnan(bad))  # the caller's tensor is untouched
    assert torch.isfinite(pred.image).all() and pred.probabilities is not None
    assert torch.isfinite(pred.probabilities).all()
    away = np.ones(bad.shape, bool)
    away[:2, :2, :] = False
    away[21:24, 14:17, :] = False
    assert (pred.label[0].numpy()[away] == clean.label[0].numpy()[away]).mean() > 0.99
    with pytest.raises(InputError, match="no finite voxel"):
        seg(MetaTensor(torch.full((8, 8, 8), float("nan")), affine=affine))


def test_probabilities_and_flip_tta(bundle: Path, sphere_case: dict) -> None:
    net = ThresholdNet(sphere_case["t1"], 1e6, gain=3.0)  # soft, so the probabilities are informative
    plain = Segmenter(bundle, device="cpu", network=net)(sphere_case["path"])
    mirrored = Segmenter(bundle, device="cpu", network=net, tta=(0, 1, 2))
    assert mirrored.tta and mirrored.tta_axes == (0, 1, 2)
    tta = mirrored(sphere_case["path"])
    assert plain.probabilities is not None and tta.probabilities is not None
    assert tuple(plain.probabilities.shape) == (3, *sphere_case["image"].shape)
    np.testing.assert_allclose(plain.probabilities.sum(0).numpy(), 1.0, atol=1e-4)
    # a flip-equivariant predictor gives the same answer with and without flip averaging
    np.testing.assert_allclose(tta.probabilities.numpy(), plain.probabilities.numpy(), atol=1e-4)
    np.testing.assert_array_equal(tta.label.numpy(), plain.label.numpy())
    no_probs = Segmenter(bundle, device="cpu", network=net, keep_probabilities=False)(sphere_case["path"])
    assert no_probs.probabilities is None


def test_label_is_the_bundles_own_postprocessing(bundle: Path, sphere_case: dict) -> None:
    """The mask equals the bundle's chain run by hand (what `monai.bundle run` and Deploy compute), also along
    the border of the foreground crop, where the reported probabilities are completed with background."""
    net = ThresholdNet(-1.0, 1e6)  # class 1 everywhere inside the crop box: its border decides the mask
    seg = Segmenter(bundle, device="cpu", network=net)
    pred = seg(sphere_case["path"])
    d = seg.preprocessing({"image": str(sphere_case["path"])})
    with torch.inference_mode():
        logits = seg.inferer(d["image"].as_tensor()[None], net)
        d["pred"] = seg.post_activation({"pred": torch.as_tensor(logits)[0]})["pred"]
        raw = seg.post_invert(d)["pred"]
        expected = seg.post_discrete({"pred": raw})["pred"]
    np.testing.assert_array_equal(pred.label.numpy(), np.asarray(expected).astype(np.uint8))
    raw_sum = np.asarray(raw).sum(0)
    assert ((raw_sum > 0.01) & (raw_sum < 0.99)).any()  # the case has a crop border
    assert pred.probabilities is not None
    np.testing.assert_allclose(pred.probabilities.sum(0).numpy(), 1.0, atol=1e-4)


def test_channel_by_channel_inversion_equals_the_bundles_inversion_of_all_channels(
    bundle: Path, sphere_case: dict
) -> None:
    """predict() inverts one channel at a time (a third of the peak memory on a big CT): the values, the grid
    and the metadata are those of the bundle's post_invert of all channels at once."""
    seg = Segmenter(bundle, device="cpu", network=ThresholdNet(0.0, 1.0))
    d = seg.preprocessing({"image": str(sphere_case["path"])})
    gen = torch.Generator().manual_seed(0)
    probs = MetaTensor(torch.softmax(torch.randn((3, *d["image"].shape[1:]), generator=gen), 0))
    before = probs.as_tensor().clone()
    whole = seg.post_invert({"image": d["image"], "pred": probs})["pred"]
    by_channel = invert_by_channel(seg.post_invert, "image", d["image"], probs)
    assert tuple(by_channel.shape) == tuple(whole.shape) == (3, *sphere_case["image"].shape)
    assert torch.equal(by_channel.as_tensor(), whole.as_tensor())
    np.testing.assert_allclose(np.asarray(by_channel.affine), np.asarray(whole.affine))
    np.testing.assert_allclose(np.asarray(by_channel.affine), sphere_case["affine"], atol=1e-4)
    assert torch.equal(probs.as_tensor(), before)  # the input is not modified


def test_bundle_weights_options_and_bf16(bundle: Path, sphere_case: dict) -> None:
    seg = Segmenter(bundle, device="cpu", sw_batch_size=3, overlap=0.5)
    assert seg.weights == "models/model.pt" and seg.device == torch.device("cpu")
    assert seg.inferer.sw_batch_size == 3 and seg.inferer.overlap == pytest.approx(0.5)
    saved = torch.load(bundle / "models" / "model.pt", weights_only=True)
    name, tensor = next(iter(saved.items()))
    assert torch.equal(seg.network.state_dict()[name].cpu(), tensor)
    assert seg.class_names[1] == "liver" and seg.name == "liver"
    pred = seg(sphere_case["path"])
    assert set(np.unique(pred.label.numpy())) <= set(seg.class_names)
    bf16 = Segmenter(bundle, device="cpu", amp="bf16")
    assert bf16.amp_dtype == torch.bfloat16
    agree = (bf16(sphere_case["path"]).label == pred.label).float().mean().item()
    assert agree > 0.9
    assert seg.describe()["sw_batch_size"] == 3


def test_amp_on_a_cpu_without_bf16_units_segments_in_fp32_and_records_why(
    bundle: Path, sphere_case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medfcn.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: [])
    fp32 = Segmenter(bundle, device="cpu", amp=False)
    amp = Segmenter(bundle, device="cpu", amp=True)
    assert amp.amp_dtype is None
    record = amp.describe()
    assert record["amp"] is None and record["precision"]["dtype"] == "float32"
    assert "no bf16 units" in record["precision"]["rule"]
    assert "no bf16 units" not in fp32.describe()["precision"]["rule"]
    a, b = amp(sphere_case["path"]), fp32(sphere_case["path"])
    assert torch.equal(a.label, b.label) and torch.equal(a.probabilities, b.probabilities)


def test_torchscript_fallback(bundle: Path, sphere_case: dict, tmp_path: Path) -> None:
    ts_bundle = copy_bundle(tmp_path / "ts", weights=True)
    ref = Segmenter(ts_bundle, device="cpu")
    patch = [int(s) for s in ref.inferer.roi_size]
    traced = torch.jit.trace(ref.network.eval(), torch.zeros(1, 1, *patch))
    traced.save(str(ts_bundle / "models" / "model.ts"))
    (ts_bundle / "models" / "model.pt").unlink()
    ts = Segmenter(ts_bundle, device="cpu")
    assert ts.weights == "models/model.ts"
    np.testing.assert_allclose(
        ts(sphere_case["path"]).probabilities.numpy(),
        ref(sphere_case["path"]).probabilities.numpy(),
        atol=1e-4,
    )


def test_clear_errors(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a medfcn/MONAI bundle"):
        Segmenter(tmp_path, device="cpu")
    empty = copy_bundle(tmp_path / "noweights", weights=False)
    with pytest.raises(BundleError, match=r"has no weights \(models/model.pt"):
        Segmenter(empty, device="cpu")
    torch.save({"conv.weight": torch.zeros(1)}, empty / "models" / "model.pt")
    with pytest.raises(BundleError, match="does not match the network_def"):
        Segmenter(empty, device="cpu")
    (empty / "models" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable PyTorch weights file"):
        Segmenter(empty, device="cpu")
    with pytest.raises(InputError, match="unknown device"):
        Segmenter(bundle, device="tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            Segmenter(bundle, device="cuda")
    with pytest.raises(InputError, match="overlap"):
        Segmenter(bundle, device="cpu", overlap=1.0)
    seg = Segmenter(bundle, device="cpu")
    with pytest.raises(InputError, match=r"cannot read missing\.nii\.gz"):
        seg(tmp_path / "missing.nii.gz")
    two = tmp_path / "two_phase.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 8, 2), np.float32), np.eye(4)), str(two))
    with pytest.raises(InputError, match="expects 1 input channel"):
        seg(two)


def test_a_bundle_object_is_accepted_like_its_folder(bundle: Path, sphere_case: dict) -> None:
    from medfcn.bundle import load_bundle

    described = load_bundle(bundle)
    by_object = Segmenter(described, device="cpu", network=ThresholdNet(sphere_case["t1"], 1e6))
    by_path = Segmenter(bundle, device="cpu", network=ThresholdNet(sphere_case["t1"], 1e6))
    assert by_object.bundle is described and by_object.bundle_root == by_path.bundle_root
    assert by_object.class_names == by_path.class_names and by_object.in_channels == described.in_channels
    assert torch.equal(by_object(sphere_case["path"]).label, by_path(sphere_case["path"]).label)
