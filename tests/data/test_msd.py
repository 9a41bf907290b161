"""MSD datasets: datalists and splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfcn.data.msd import load_datalist, split_datalist
from medfcn.errors import DataError, InputError

# ----------------------------------------------------------------------------------------------- datalists


def test_load_datalist_gives_absolute_existing_paths(synthetic_dataset: Path) -> None:
    for root in (synthetic_dataset, synthetic_dataset / "dataset.json"):
        datalist = load_datalist(root)
        assert set(datalist) == {"training", "test"}
        assert len(datalist["training"]) == 6 and len(datalist["test"]) == 2
        first = datalist["training"][0]
        assert first == {
            "image": str(synthetic_dataset.resolve() / "imagesTr" / "liver_000.nii.gz"),
            "label": str(synthetic_dataset.resolve() / "labelsTr" / "liver_000.nii.gz"),
        }
        assert datalist["test"][1] == {
            "image": str(synthetic_dataset.resolve() / "imagesTs" / "liver_007.nii.gz")
        }
        for item in datalist["training"] + datalist["test"]:
            assert all(Path(p).is_absolute() and Path(p).is_file() for p in item.values())


def test_missing_dataset_says_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "Task03_Liver")
    message = str(err.value)
    assert str(tmp_path / "Task03_Liver") in message and "does not exist" in message
    assert "medfcn data synth" in message and "medfcn data download Task03_Liver" in message
    with pytest.raises(DataError, match=r"dataset\.json is missing"):
        load_datalist(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "x"}', 'no "training" list'),
        ('{"training": [{"image": "a.nii.gz"}]}', "training entry 0"),
        ('{"training": [], "test": 3}', '"test" must be a list'),
    ],
)
def test_invalid_dataset_json_is_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DataError, match=match) as err:
        load_datalist(tmp_path)
    assert str(tmp_path / "dataset.json") in str(err.value)


def test_listed_files_that_are_missing_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], "test": []}
        )
    )
    with pytest.raises(DataError, match=r"2 file\(s\) listed .* missing \(first: imagesTr/a.nii.gz\)"):
        load_datalist(tmp_path)
    assert load_datalist(tmp_path, check_files=False)["training"][0]["image"].endswith("imagesTr/a.nii.gz")


# ----------------------------------------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_covering() -> None:
    items = [f"case{i}" for i in range(23)]
    train, val = split_datalist(items, val_fraction=0.2, seed=5)
    assert (train, val) == split_datalist(items, val_fraction=0.2, seed=5)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == sorted(items)
    assert train == [i for i in items if i in train]  # original order kept
    assert split_datalist(items, val_fraction=0.2, seed=6)[1] != val
    # Tiny datasets still get one case on each side.
    assert [len(s) for s in split_datalist(items[:2], val_fraction=0.01)] == [1, 1]
    assert [len(s) for s in split_datalist(items[:3], val_fraction=0.99)] == [1, 2]


def test_k_fold_partitions_every_case_once() -> None:
    items = list(range(17))
    vals = [split_datalist(items, fold=f, num_folds=5, seed=1)[1] for f in range(5)]
    assert sorted(v for fold in vals for v in fold) == items  # folds are disjoint and cover everything
    assert sorted(len(v) for v in vals) == [3, 3, 3, 4, 4]
    for f, val in enumerate(vals):
        train, again = split_datalist(items, fold=f, num_folds=5, seed=1)
        assert again == val and sorted(train + val) == items and not set(train) & set(val)
    assert split_datalist(items, fold=0, num_folds=5, seed=2)[1] != vals[0]


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="at least 2"):
        split_datalist([1])
    with pytest.raises(InputError, match="val_fraction"):
        split_datalist([1, 2, 3], val_fraction=1.0)
    with pytest.raises(InputError, match="fold must be"):
        split_datalist([1, 2, 3], fold=3, num_folds=3)
    with pytest.raises(InputError, match="num_folds"):
        split_datalist([1, 2, 3], fold=0, num_folds=4)
