"""Shared pieces of the CLI: exit codes, error formatting, console."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import typer

from medfcn.errors import MedfcnError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "bundle_option", "fail", "user_errors"]

EXIT_OK = 0
EXIT_FAILED = 1  # the command could not do its job (bad bundle, unreadable dataset, ...)
EXIT_USAGE = 2  # wrong options or paths (typer/click use 2 as well)
EXIT_PARTIAL = 3  # batch commands: some cases failed, the others succeeded


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
        raise fail(str(err).splitlines()[0] if str(err) else type(err).__name__, code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
