"""Progress of long loops: a tqdm bar on a terminal, plain lines when stderr is a file or a pipe.

A tqdm bar redraws itself with carriage returns; written into a log file (CI, ``nohup``, a scheduler's
log) that is hundreds of ``\\r`` updates per epoch. So when the stream is not a terminal,
:func:`progress` returns an object with the same methods (``update``, ``set_postfix_str``, ``write``,
``close``, iteration, ``with``) that prints one line per step (``lines="each"``: a case) or one line
when the loop ends (``lines="end"``: an epoch of batches, a folder scan), or nothing (``"none"``: the
caller prints its own line per step with ``write``).

Example:
    >>> from medfcn._progress import progress
    >>> for item in progress(range(3), desc="cases", unit="case", lines="each"):  # doctest: +SKIP
    ...     pass
    cases: 1/3 case
    ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

__all__ = ["LineProgress", "Lines", "progress"]

Lines = Literal["each", "end", "none"]


class LineProgress:
    """tqdm's interface, one plain line per step (or per loop) instead of a redrawn bar."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        lines: Lines,
        file: IO[str],
        silent: bool = False,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.lines: Lines = "none" if silent else lines
        self.file = file
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._closed = False

    def _status(self) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        return f"{self.desc}: {count} {self.unit}" + (f", {self.postfix}" if self.postfix else "")

    def write(self, message: str) -> None:
        """Print ``message`` on its own line (always, as ``tqdm.write`` does)."""
        print(message, file=self.file, flush=True)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.lines == "each":
            self.write(self._status())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.lines == "end":
            self.write(f"{self._status()} ({time.perf_counter() - self._t0:.1f} s)")

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress object was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    lines: Lines = "each",
    leave: bool = True,
    file: IO[str] | None = None,
) -> Any:
    """A progress object for a loop: a tqdm bar when ``file`` (default stderr) is a terminal, else a
    :class:`LineProgress` printing per ``lines``.

    Args:
        iterable: what to iterate (optional; without it, call ``update``).
        total, desc, unit, initial: as tqdm's.
        enabled: ``False`` prints no progress at all (``write`` still prints).
        lines: without a terminal, ``"each"`` prints a line per step, ``"end"`` one line when the loop
            ends, ``"none"`` nothing (the caller writes its own lines).
        leave: as tqdm's (terminal only).
        file: the stream; default ``sys.stderr``.
    """
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if enabled and callable(isatty) and isatty():
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            leave=leave,
            dynamic_ncols=True,
            file=stream,
        )
    return LineProgress(
        iterable, total=total, desc=desc, unit=unit, initial=initial, lines=lines, file=stream, silent=not enabled
    )
