"""Dataset formats: nnU-Net v2 raw (multi-channel), CSV and JSON lists; clear one-line errors; data check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _datasets_support import write_nnunet_raw

from medfcn.cli.main import app
from medfcn.data.dataset_check import check_dataset
from medfcn.data.datasets import count_channels, read_dataset
from medfcn.data.msd import load_datalist
from medfcn.data.synthetic import make_phantom
from medfcn.errors import DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nnunet_raw(tmp_path_factory.mktemp("raw") / "Dataset501_Phantom")


def test_nnunet_raw_reads_as_multichannel_datalist(nnunet: Path) -> None:
    desc = read_dataset(nnunet)
    assert desc["format"] == "nnunet" and desc["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert desc["modality"] == {"0": "CT0", "1": "CT1"}
    assert desc["training"][0] == {
        "image": ["imagesTr/case_000_0000.nii.gz", "imagesTr/case_000_0001.nii.gz"],
        "label": "labelsTr/case_000.nii.gz",
    }
    datalist = load_datalist(nnunet)
    assert len(datalist["training"]) == 3 and len(datalist["test"]) == 1
    first = datalist["training"][0]
    assert first["image"] == [str(nnunet / "imagesTr" / f"case_000_000{c}.nii.gz") for c in (0, 1)]
    assert first["label"] == str(nnunet / "labelsTr" / "case_000.nii.gz")
    assert count_channels(nnunet) == 2
    check = check_dataset(nnunet)
    assert check.ok, [str(p) for p in check.problems]
    assert check.num_training == 3 and check.fingerprint is not None
    fp = check.fingerprint.intensity
    assert set(fp) == {"0", "1"} and fp["1"]["p50"] == pytest.approx(fp["0"]["p50"] / 2, rel=0.05)


def test_monai_loads_the_channel_files_stacked(nnunet: Path) -> None:
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    item = load_datalist(nnunet)["training"][0]
    d = EnsureChannelFirstd(keys=["image", "label"])(LoadImaged(keys=["image", "label"])(item))
    assert tuple(d["image"].shape) == (2, 30, 28, 12) and tuple(d["label"].shape) == (1, 30, 28, 12)


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        ("missing_channel", r"case_001: channel file\(s\) _0001.nii.gz missing; dataset.json declares 2"),
        ("no_suffix", r"imagesTr/case_x.nii.gz: nnU-Net v2 image names end in a 4-digit channel suffix"),
        ("orphan_label", r"labelsTr/case_999.nii.gz: label without images"),
        ("regions", r"region-based labels .* not supported"),
        ("no_file_ending", r'nnU-Net v2 needs "file_ending"'),
        ("neither", r'dataset.json has no "training" list \(MSD\) and no "channel_names"'),
    ],
)
def test_broken_nnunet_datasets_are_one_line_errors(tmp_path: Path, breakage: str, match: str) -> None:
    root = write_nnunet_raw(tmp_path / "ds", cases=2, channels=2, shape=(12, 12, 6), test=0)
    meta = json.loads((root / "dataset.json").read_text())
    if breakage == "missing_channel":
        (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    elif breakage == "no_suffix":
        (root / "imagesTr" / "case_000_0000.nii.gz").rename(root / "imagesTr" / "case_x.nii.gz")
    elif breakage == "orphan_label":
        (root / "labelsTr" / "case_000.nii.gz").rename(root / "labelsTr" / "case_999.nii.gz")
    elif breakage == "regions":
        meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        meta["regions_class_order"] = [1, 2]
    elif breakage == "no_file_ending":
        del meta["file_ending"]
    else:
        meta = {"name": "x", "description": "a dataset.json of another tool"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=match) as err:
        load_datalist(root)
    assert "\n" not in str(err.value)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_csv_and_json_lists(tmp_path: Path) -> None:
    ph = make_phantom((16, 14, 8), seed=3, noise_hu=0.0)
    (tmp_path / "scans").mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(ph.image, ph.affine), str(tmp_path / "scans" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(ph.label, ph.affine), str(tmp_path / "scans" / f"{name}_seg.nii.gz"))
    (tmp_path / "list.csv").write_text("image,label\nscans/a.nii.gz,scans/a_seg.nii.gz\nscans/b.nii.gz,\n")
    dl = load_datalist(tmp_path / "list.csv")
    assert dl["training"] == [{"image": str(tmp_path / "scans/a.nii.gz"), "label": str(tmp_path / "scans/a_seg.nii.gz")}]
    assert dl["test"] == [{"image": str(tmp_path / "scans/b.nii.gz")}]
    items = [{"image": "scans/a.nii.gz", "label": "scans/a_seg.nii.gz"}, {"image": "scans/b.nii.gz", "label": "scans/b_seg.nii.gz"}]
    (tmp_path / "list.json").write_text(json.dumps(items))
    assert len(load_datalist(tmp_path / "list.json")["training"]) == 2
    assert check_dataset(tmp_path / "list.json").ok
    (tmp_path / "multi.csv").write_text("image_0000,image_0001,label\nscans/a.nii.gz,scans/b.nii.gz,scans/a_seg.nii.gz\n")
    assert load_datalist(tmp_path / "multi.csv")["training"][0]["image"] == [
        str(tmp_path / "scans/a.nii.gz"), str(tmp_path / "scans/b.nii.gz")]
    assert count_channels(tmp_path / "multi.csv") == 2 and count_channels(tmp_path / "list.csv") == 1

    (tmp_path / "bad.csv").write_text("path,mask\nscans/a.nii.gz,scans/a_seg.nii.gz\n")
    with pytest.raises(DataError, match=r"bad.csv: expected a header with an image column"):
        load_datalist(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps([{"img": "scans/a.nii.gz"}]))
    with pytest.raises(DataError, match=r'bad.json: entry 0 must be \{"image"'):
        load_datalist(tmp_path / "bad.json")
    (tmp_path / "gone.csv").write_text("image,label\nscans/zz.nii.gz,scans/a_seg.nii.gz\n")
    with pytest.raises(DataError, match=r"1 file\(s\) listed in .*gone.csv are missing \(first: scans/zz.nii.gz\)"):
        load_datalist(tmp_path / "gone.csv")


def test_data_check_cli_reads_nnunet_raw(nnunet: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(nnunet)])
    assert result.exit_code == 0, result.output
    assert "ok: no problems found" in result.output
