"""The root of the CLI: --help, --version, info, and how user errors are reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import medfcn
from medfcn.cli._common import EXIT_FAILED, user_errors
from medfcn.cli.main import app
from medfcn.engine.inference import cpu_bf16_units, cpu_has_bf16
from medfcn.errors import InputError

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("info", "data", "train", "infer", "evaluate", "export"):
        assert command in result.output


@pytest.mark.parametrize("command", ["data", "train", "infer", "evaluate", "export", "info"])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"medfcn {medfcn.__version__}"


def test_info_reports_versions_and_devices() -> None:
    import monai
    import torch

    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    rows = {line.split("  ")[0]: line.split()[-1] for line in result.output.splitlines() if line.strip()}
    assert rows["monai"] == monai.__version__
    assert rows["torch"] == torch.__version__
    assert rows["cuda available"] == str(torch.cuda.is_available())
    bf16_row = next(line for line in result.output.splitlines() if line.startswith("cpu bf16 units"))
    assert ("yes" in bf16_row) == cpu_has_bf16()
    for unit in cpu_bf16_units():
        assert unit in bf16_row
    assert ("no AMX" in bf16_row) == (cpu_has_bf16() and "AMX" not in cpu_bf16_units())
    if not torch.cuda.is_available():  # what --amp does on this CPU
        autocast_row = next(line for line in result.output.splitlines() if line.startswith("bf16 autocast"))
        assert ("--amp runs fp32" in autocast_row) == (not cpu_has_bf16())


def test_cpu_bf16_detection_agrees_with_the_kernel_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = cpuinfo.read_text()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags or "amx_tile" in flags)
    words = set(flags.split())
    assert ("AVX512-BF16" in cpu_bf16_units()) == ("avx512_bf16" in words)
    assert ("AMX" in cpu_bf16_units()) == bool(words & {"amx_bf16", "amx_tile"})


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2


def test_user_errors_become_one_line_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_info, user_errors():
        raise InputError("scans/a.nii.gz: not a NIfTI file (truncated header)\nmore detail")
    assert exit_info.value.exit_code == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == "error: scans/a.nii.gz: not a NIfTI file (truncated header)\n"


def test_bugs_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError), user_errors():
        _ = 1 / 0


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "medfcn", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"medfcn {medfcn.__version__}"


def test_import_is_lazy() -> None:
    """`import medfcn` must not import torch (keeps `medfcn --help` fast)."""
    code = "import sys, medfcn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_and_run_record_say_whether_tensors_get_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import medfcn` asks PyTorch for transparent huge pages (unless the user set it); info reports it."""
    import os

    from medfcn.memory import huge_pages

    assert os.environ["THP_MEM_ALLOC_ENABLE"] in ("1", "0")  # medfcn's default, or the user's own
    result = runner.invoke(app, ["info"])
    row = next(line for line in result.output.splitlines() if line.startswith("huge pages (tensors)"))
    assert row.endswith(huge_pages())
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        assert huge_pages().startswith("unknown")
        return
    if "[madvise]" in mode:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
        assert huge_pages() == "on (kernel THP: madvise)"
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
        assert huge_pages() == "off: THP_MEM_ALLOC_ENABLE=0 (kernel THP: madvise)"
    elif "[never]" in mode:
        assert huge_pages() == "off (kernel THP: never)"
