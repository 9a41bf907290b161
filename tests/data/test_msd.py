"""MSD datasets: datalists, splits, dataset checks and downloads (from a server the test runs itself)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfcn.data.msd import check_dataset, download_msd, load_datalist, msd_tasks, split_datalist
from medfcn.data.synthetic import write_msd_dataset
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


# ----------------------------------------------------------------------------------------------- checks


def test_check_passes_on_a_good_dataset_and_fingerprints_it(synthetic_dataset: Path) -> None:
    result = check_dataset(synthetic_dataset)
    assert result.ok, result.problems
    assert (result.num_training, result.num_test) == (6, 2)
    assert result.labels == {0: "background", 1: "liver", 2: "tumour"} and result.modality == {"0": "CT"}
    fp = result.fingerprint
    assert fp is not None
    assert fp.median_shape == (48, 48, 32)
    assert 0.7 <= fp.median_spacing[0] <= 1.0 and 1.5 <= fp.median_spacing[2] <= 5.0
    assert all(
        lo <= med <= hi for lo, med, hi in zip(fp.min_spacing, fp.median_spacing, fp.max_spacing, strict=True)
    )
    stats = fp.intensity["0"]
    assert stats["p0.5"] < stats["p50"] < stats["p99.5"]
    assert 30 <= stats["p50"] <= 90  # foreground is mostly liver, ~+60 HU
    assert set(fp.label_voxels) == {0, 1, 2} and fp.label_voxels[1] > fp.label_voxels[2] > 0
    expected = sum(
        int(np.count_nonzero(np.asanyarray(nib.load(p).dataobj) == 1))
        for p in sorted((synthetic_dataset / "labelsTr").glob("*.nii.gz"))
    )
    assert fp.label_voxels[1] == expected


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_msd_dataset(tmp_path / "ds", num_train=5, num_test=1, shape=(20, 22, 10), seed=1)


def test_check_lists_every_problem_at_once(small_dataset: Path) -> None:
    root = small_dataset
    # liver_000: label with a shifted affine; liver_001: label missing; liver_002: undeclared value 5;
    # liver_003: label of another shape; imagesTs/liver_005: missing test image.
    lab = nib.load(root / "labelsTr" / "liver_000.nii.gz")
    shifted = lab.affine.copy()
    shifted[:3, 3] += [0.0, 2.5, 0.0]
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), shifted), root / "labelsTr" / "liver_000.nii.gz")
    (root / "labelsTr" / "liver_001.nii.gz").unlink()
    lab2 = nib.load(root / "labelsTr" / "liver_002.nii.gz")
    data = np.asanyarray(lab2.dataobj).copy()
    data[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(data, lab2.affine), root / "labelsTr" / "liver_002.nii.gz")
    lab3 = nib.load(root / "labelsTr" / "liver_003.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asanyarray(lab3.dataobj)[:, :, :-1], lab3.affine),
        root / "labelsTr" / "liver_003.nii.gz",
    )
    (root / "imagesTs" / "liver_005.nii.gz").unlink()

    result = check_dataset(root)
    assert not result.ok
    by_file = {p.path: p.message for p in result.problems}
    assert set(by_file) == {
        "labelsTr/liver_000.nii.gz",
        "labelsTr/liver_001.nii.gz",
        "labelsTr/liver_002.nii.gz",
        "labelsTr/liver_003.nii.gz",
        "imagesTs/liver_005.nii.gz",
    }
    assert (
        "affine differs" in by_file["labelsTr/liver_000.nii.gz"]
        and "2.5" in by_file["labelsTr/liver_000.nii.gz"]
    )
    assert "missing" in by_file["labelsTr/liver_001.nii.gz"]
    assert (
        "[5]" in by_file["labelsTr/liver_002.nii.gz"]
        and "not declared" in by_file["labelsTr/liver_002.nii.gz"]
    )
    assert "shape (20, 22, 9) differs from its image (20, 22, 10)" in by_file["labelsTr/liver_003.nii.gz"]
    assert "missing" in by_file["imagesTs/liver_005.nii.gz"]
    assert result.fingerprint is not None  # the readable cases are still summarised


def test_check_reports_json_level_problems(small_dataset: Path) -> None:
    meta = json.loads((small_dataset / "dataset.json").read_text())
    meta["numTraining"] = 9
    meta["labels"] = {"0": "background", "1": "liver"}  # tumour (2) is no longer declared
    (small_dataset / "dataset.json").write_text(json.dumps(meta))
    (small_dataset / "imagesTr" / "liver_004.nii.gz").write_bytes(b"not a nifti file")
    result = check_dataset(small_dataset)
    messages = [str(p) for p in result.problems]
    assert "dataset.json: numTraining is 9 but 5 entries are listed" in messages
    assert any(m.startswith("imagesTr/liver_004.nii.gz: cannot be read as NIfTI") for m in messages)
    assert sum("not declared" in m for m in messages) == 5  # every label holds tumour voxels


def test_check_missing_dataset_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="medfcn data synth"):
        check_dataset(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------- download


def _make_task_archive(folder: Path, task: str) -> tuple[Path, str]:
    """A small MSD-style tar archive (``<task>/dataset.json`` + one image/label pair) and its md5."""
    ds = write_msd_dataset(folder / "src" / task, num_train=1, num_test=0, shape=(12, 12, 8), seed=2)
    archive = folder / "www" / f"{task}.tar"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(ds, arcname=task)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``tmp_path/www`` on 127.0.0.1 from a thread; the server stops when the test ends."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www))
    )
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_verifies_md5_and_extracts(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, www = http_root
    archive, md5 = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    shutil.copy(archive, www / archive.name)
    out = tmp_path / "data"
    target = download_msd("Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5=md5, progress=False)
    assert target == out / "Task99_Tiny"
    assert load_datalist(target)["training"][0]["image"].endswith("imagesTr/liver_000.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == ["Task99_Tiny"]  # archive and staging folder cleaned up
    # Already there: no second download, even with the server gone.
    (www / archive.name).unlink()
    assert (
        download_msd("Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5=md5, progress=False) == target
    )


def test_download_with_wrong_md5_fails_and_leaves_nothing(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base_url, www = http_root
    archive, _ = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    shutil.copy(archive, www / archive.name)
    out = tmp_path / "data"
    with pytest.raises(DataError, match="does not match md5 0123456789abcdef0123456789abcdef"):
        download_msd(
            "Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5="0123456789abcdef" * 2, progress=False
        )
    assert list(out.iterdir()) == []


def test_download_from_an_archive_on_disk(tmp_path: Path) -> None:
    archive, md5 = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    before = archive.read_bytes()
    with pytest.raises(DataError, match=f"Task99_Tiny from {archive} does not match md5"):
        download_msd("Task99_Tiny", tmp_path / "data", url=str(archive), md5="f" * 32)
    assert archive.read_bytes() == before  # the user's file is never removed or changed
    target = download_msd("Task99_Tiny", tmp_path / "data", url=archive.as_uri(), md5=md5)
    assert (target / "labelsTr" / "liver_000.nii.gz").is_file()
    assert archive.read_bytes() == before
    with pytest.raises(DataError, match="does not exist"):
        download_msd("Task98_Gone", tmp_path / "data", url=str(tmp_path / "nope.tar"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match=r"cannot extract .*junk\.tar"):
        download_msd("Task97_Junk", tmp_path / "data", url=str(tmp_path / "junk.tar"))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["Task99_Tiny"]


def test_download_offline_is_a_clear_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, _ = http_root
    with pytest.raises(
        DataError, match=r"could not download Task99_Tiny from .*/missing.tar: .*404.*check your network"
    ):
        download_msd("Task99_Tiny", tmp_path / "data", url=f"{base_url}/missing.tar", progress=False)
    with socket.socket() as sock:  # a port nobody listens on: connection refused, like being offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Task03_Liver.tar"
    with pytest.raises(
        DataError, match=rf"could not download Task03_Liver from {url}: .*download it by hand and pass --data"
    ):
        download_msd("Task03_Liver", tmp_path / "data", url=url, progress=False)
    assert not (tmp_path / "data" / "Task03_Liver").exists()


def test_download_knows_the_msd_tasks(tmp_path: Path) -> None:
    tasks = msd_tasks()
    assert tasks["Task03_Liver"][0].endswith("/Task03_Liver.tar") and len(tasks["Task03_Liver"][1]) == 32
    assert len(tasks) == 10
    with pytest.raises(DataError, match="unknown MSD task 'Task42_Brain'; choose one of Task01_BrainTumour"):
        download_msd("Task42_Brain", tmp_path)
