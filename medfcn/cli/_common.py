"""Shared pieces of the CLI: exit codes, error formatting, the options every command spells the same way
(``--bundle``, ``--device``, ``--amp/--no-amp``, ``--quiet/-q``, ``--tracking/--no-tracking``) and the help
renderer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import typer

from medfcn.errors import MedfcnError, one_line

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "HELP_WIDTH",
    "amp_option",
    "bundle_option",
    "device_option",
    "fail",
    "new_app",
    "quiet_option",
    "tracking_option",
    "user_errors",
]

EXIT_OK = 0
EXIT_FAILED = 1  # the command could not do its job (bad bundle, unreadable dataset, ...)
EXIT_USAGE = 2  # wrong options or paths (typer/click use 2 as well)
EXIT_PARTIAL = 3  # batch commands: some cases failed, the others succeeded

HELP_WIDTH = 120
"""Help is wrapped at word boundaries to the terminal's width, at most this many columns (never cut)."""


def new_app(**kwargs: Any) -> typer.Typer:
    """A ``typer.Typer`` with the settings every medfcn command group shares.

    Help is rendered by click's plain formatter (``rich_markup_mode=None``), not typer's rich panels:
    typer 0.29's panels print a ``<bool>`` value column for flags such as ``--tta`` (which take no value)
    and cut option names at 80 columns when stdout is not a terminal; the plain formatter lists a flag
    as a flag and rewraps each paragraph to the width. tests/cli/test_help.py holds both properties.
    """
    settings: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH}
    settings.update(kwargs.pop("context_settings", {}))
    return typer.Typer(
        rich_markup_mode=None,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings=settings,
        **kwargs,
    )


def device_option() -> Any:
    """``--device``, spelled and explained once for every command that runs a network."""
    return typer.Option(
        "--device",
        help="auto (a GPU if there is one, under torchrun the rank's own; else Apple MPS; else the CPU, with a "
        "warning), cpu, cuda, cuda:N or mps (where torch has it).",
    )


def amp_option(note: str = "") -> Any:
    """``--amp/--no-amp`` (default ``None``: on for CUDA, off on the CPU); ``note`` adds what it changes
    for this command."""
    help_text = (
        "Mixed precision: CUDA bf16 (fp16 on GPUs without bf16), CPU bf16. Default: on for CUDA (faster, "
        "less memory), off on the CPU (fp32). On a CPU, bf16 pays only with AVX512-BF16/AMX units (see "
        "medfcn info); on one without them --amp runs fp32 (emulated bf16 is 13-45x slower)."
    )
    return typer.Option("--amp/--no-amp", help=f"{help_text} {note}".strip(), show_default=False)


def quiet_option() -> Any:
    """``--quiet/-q``: the one switch for progress output on every command."""
    return typer.Option(
        "--quiet",
        "-q",
        help="No progress output (a bar on a terminal, else one line per case or epoch); warnings and errors "
        "still print.",
    )


def tracking_option(what: str = "the run") -> Any:
    """``--tracking/--no-tracking`` (default on), for every command that trains."""
    return typer.Option("--tracking/--no-tracking", help=f"Track {what} in MLflow (default: on).")


def bundle_option(help: str, *, readable: bool = False) -> Any:
    """The ``--bundle`` option every bundle command takes: an existing folder, resolved to an absolute path."""
    return typer.Option(
        "--bundle", exists=True, file_okay=False, dir_okay=True, readable=readable, resolve_path=True, help=help
    )


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on one line of stderr and return the ``typer.Exit`` to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(code: int = EXIT_FAILED) -> Iterator[None]:
    """Turn a :class:`MedfcnError` into one line on stderr and an exit code; anything else is a bug
    and keeps its traceback."""
    try:
        yield
    except MedfcnError as err:
        raise fail(one_line(err), code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
