"""``medfcn evaluate``: help, usage and data errors, and a full run on the trained bundle."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from medfcn.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from medfcn.cli.main import app

runner = CliRunner()


def test_help_names_every_option() -> None:
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == EXIT_OK, result.output
    for option in (
        "--bundle",
        "--data",
        "--split",
        "--output",
        "--device",
        "--amp",
        "--seed",
        "--val-fraction",
    ):
        assert option in result.output


def test_unknown_split_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--bundle", str(tmp_path), "--data", str(tmp_path), "--split", "train"]
    )
    assert result.exit_code == EXIT_USAGE


def test_dataset_without_dataset_json_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "data").mkdir()
    result = runner.invoke(
        app,
        ["evaluate", "--bundle", str(tmp_path / "bundle"), "--data", str(tmp_path / "data"), "--quiet"],
    )
    assert result.exit_code == EXIT_FAILED
    assert "dataset.json" in result.output and "Traceback" not in result.output


def test_evaluate_cli_writes_csv_and_prints_summary(
    trained_bundle: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "metrics.csv"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--bundle",
            str(trained_bundle),
            "--data",
            str(synthetic_dataset),
            "--split",
            "val",
            "--output",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == EXIT_OK, result.output
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"case", "class", "dice", "hd95_mm"}
    for name in {r["class"] for r in rows}:
        assert name in result.output  # one summary line per class
    assert "±" in result.output
