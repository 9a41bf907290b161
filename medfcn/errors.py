"""Exceptions raised by medfcn.

Library code raises these; only :mod:`medfcn.cli` turns them into a one-line message and an exit code.
Every message says what was expected, what was found, which file, and what to do next.
"""

from __future__ import annotations

__all__ = ["BundleError", "DataError", "InputError", "MedfcnError", "one_line", "root_cause"]


class MedfcnError(Exception):
    """Base class of every error medfcn raises on purpose (a user-facing problem, not a bug)."""


class InputError(MedfcnError):
    """A scan, folder or option given by the user cannot be used (missing, unreadable, wrong shape...)."""


class DataError(InputError):
    """A dataset (MSD layout, dataset.json, image/label pairs) is missing or inconsistent."""


class BundleError(MedfcnError):
    """A MONAI bundle is missing files, has an invalid config, or lacks weights."""


def one_line(err: BaseException, *, typed: bool = False) -> str:
    """The message of ``err`` as one line: its first non-empty line, else the exception's type name.

    This is what logs, skip reasons and CLI errors show, so that a user's mistake is never a traceback.
    ``typed`` puts the type name first (``ValueError: ...``): a library's message often needs its type to
    make sense, where medfcn's own messages do not.
    """
    name = type(err).__name__
    for line in str(err).splitlines():
        if line.strip():
            return f"{name}: {line.strip()}" if typed else line.strip()
    return name


def root_cause(err: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``err`` (``err`` itself if it has none).

    MONAI wraps a config error in layers of "Failed to instantiate ..."; the innermost one says what is wrong:
    ``one_line(root_cause(err), typed=True)``.
    """
    while err.__cause__ is not None:
        err = err.__cause__
    return err
