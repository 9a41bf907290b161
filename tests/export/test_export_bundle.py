"""``medfcn export``: TorchScript and ONNX files that reproduce the checkpoint, written like ckpt_export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medfcn.bundle.export import check_shape_for, export_bundle, load_torchscript_bundle
from medfcn.errors import BundleError

# Sizes the export never saw: the patch size is cubic and even, the export check ~3/4 of it. The liver
# FCN halves the grid five times, so every side stays above 32 (a 1x1x1 bottleneck is undefined for
# instance norm, in eager PyTorch as much as in the exports).
NEW_SIZE = (1, 1, 35, 42, 33)
NEW_SIZE_BATCH = (2, 1, 37, 34, 45)


def _eager(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval()


def _input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_torchscript_reproduces_the_checkpoint(exported_bundle) -> None:  # type: ignore[no-untyped-def]
    bundle, result = exported_bundle
    ts = result.exports[0]
    assert ts.format == "torchscript" and ts.path == bundle / "models" / "model.ts"
    assert ts.size_bytes == ts.path.stat().st_size > 0
    # The export's own check ran at a new size and passed.
    assert ts.max_abs_diff is not None and ts.tolerance is not None and ts.max_abs_diff <= ts.tolerance
    assert ts.input_shape is not None and ts.input_shape[0] == 2
    module, _, _ = load_torchscript_bundle(ts.path)
    x = _input(NEW_SIZE)
    with torch.no_grad():
        expected = _eager(bundle)(x)
        got = module(x)
    assert got.shape == expected.shape == (1, expected.shape[1], *NEW_SIZE[2:])
    assert expected.shape[1] == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * max(1.0, float(expected.abs().max())))


def test_onnx_runtime_reproduces_pytorch(exported_bundle) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    bundle, result = exported_bundle
    onnx_check = result.exports[1]
    assert onnx_check.format == "onnx" and onnx_check.path == bundle / "models" / "model.onnx"
    assert onnx_check.max_abs_diff is not None and onnx_check.tolerance is not None
    assert onnx_check.max_abs_diff <= onnx_check.tolerance
    session = ort.InferenceSession(str(onnx_check.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["pred"]
    x = _input(NEW_SIZE_BATCH, seed=2)  # batch 2 and a third new size: the axes are really dynamic
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = _eager(bundle)(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_embedded_files_and_metadata(exported_bundle, liver_source: Path) -> None:  # type: ignore[no-untyped-def]
    import monai

    bundle, result = exported_bundle
    _, meta, inference = load_torchscript_bundle(bundle / "models" / "model.ts")
    on_disk = json.loads((bundle / "configs" / "metadata.json").read_text())
    original = json.loads((liver_source / "configs" / "metadata.json").read_text())
    # Deploy reads metadata.json from the .ts: it is the updated metadata, identical to the file.
    assert meta == on_disk
    major, minor, patch = (int(p) for p in original["version"].split("."))
    assert result.version == on_disk["version"] == f"{major}.{minor}.{patch + 1}"
    first_version, first_note = next(iter(on_disk["changelog"].items()))
    assert first_version == result.version and "TorchScript + ONNX" in first_note
    import onnxruntime

    assert "max |TorchScript - checkpoint|" in first_note
    assert f"max |ONNX Runtime {onnxruntime.__version__} - checkpoint|" in first_note
    for old_version in original["changelog"]:
        assert on_disk["changelog"][old_version] == original["changelog"][old_version]
    assert on_disk["monai_version"] == monai.__version__
    assert on_disk["pytorch_version"] == torch.__version__.split("+")[0]
    assert on_disk["required_packages_version"]["medfcn"]
    assert on_disk["network_data_format"] == original["network_data_format"]
    # inference.json travels whole, with the ids Deploy and `monai.bundle run` use.
    source = json.loads((bundle / "configs" / "inference.json").read_text())
    for key in ("network_def", "preprocessing", "inferer", "postprocessing"):
        assert key in inference
    assert inference == {k: v for k, v in source.items() if k != "_meta_"} or "%" in json.dumps(source)


def test_macros_and_split_configs_are_resolved_before_embedding(weighted_bundle: Path) -> None:
    configs = weighted_bundle / "configs"
    config = json.loads((configs / "inference.json").read_text())
    (configs / "common.json").write_text(json.dumps({"network_def": config["network_def"]}))
    config["network_def"] = "%configs/common.json#network_def"
    (configs / "inference.json").write_text(json.dumps(config, indent=4))
    export_bundle(weighted_bundle, check=False, bump="none")
    _, _, embedded = load_torchscript_bundle(weighted_bundle / "models" / "model.ts")
    assert embedded["network_def"] == json.loads((configs / "common.json").read_text())["network_def"]
    assert "%configs" not in json.dumps(embedded)


def test_unfaithful_export_writes_nothing(weighted_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the scripted network differs from the checkpoint, no file of the bundle changes."""
    import medfcn.bundle.export as export_module

    real_script = export_module._script

    def perturbed(net: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            next(net.parameters()).add_(0.5)
        return real_script(net)

    monkeypatch.setattr(export_module, "_script", perturbed)
    before = _files(weighted_bundle)
    with pytest.raises(BundleError, match="differs from the checkpoint"):
        export_bundle(weighted_bundle, onnx=True)
    assert _files(weighted_bundle) == before  # no model.ts/.onnx, metadata untouched, no staging folder left


def test_missing_weights_is_a_bundle_error(weighted_bundle: Path) -> None:
    (weighted_bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"model\.pt.*train"):
        export_bundle(weighted_bundle)


def test_weights_of_another_network_are_a_bundle_error(weighted_bundle: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, weighted_bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match="do not fit 'network_def'"):
        export_bundle(weighted_bundle, check=False)


def test_check_shape_is_new_and_odd() -> None:
    shape = check_shape_for((96, 96, 64))
    assert len(set(shape)) == 3 and all(s % 2 == 1 for s in shape)
    assert all(s != p for s, p in zip(shape, (96, 96, 64), strict=True))


def test_cli_export(weighted_bundle: Path) -> None:
    from medfcn.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "--bundle", str(weighted_bundle), "--bump-version", "minor"])
    assert result.exit_code == 0, result.output
    assert "models/model.ts" in result.stdout and "max |diff| vs checkpoint" in result.stdout
    assert "models/model.onnx" not in result.stdout  # ONNX is opt-in
    version = json.loads((weighted_bundle / "configs/metadata.json").read_text())["version"]
    assert version.endswith(".0") and f"version {version}" in result.stdout
    (weighted_bundle / "models" / "model.pt").unlink()
    failed = runner.invoke(app, ["export", "--bundle", str(weighted_bundle)])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("error: ") and "model.pt" in failed.stderr
