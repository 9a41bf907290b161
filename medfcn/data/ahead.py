"""Work on a file ahead of time: :func:`start` runs ``produce(path)`` in a background thread, and the next
:func:`take` of the same, unchanged file gets its result instead of doing the work again.

``medfcn infer`` reads its first scan so (:func:`medfcn.data.nifti_io.read_nifti_ahead`): inflating a
``.nii.gz`` (ISA-L) and casting its voxels (numpy) release the GIL, so one core reads the scan while the
other imports PyTorch and MONAI. A file that changed since (device, inode, size or modification time) is
not taken from the read-ahead. This module imports neither PyTorch nor MONAI.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = path.write_text("scan")
    >>> start(path, "text", lambda p: pathlib.Path(p).read_text().upper())
    True
    >>> take(path, "text")
    (True, 'SCAN')
    >>> take(path, "text")
    (False, None)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["forget", "start", "take"]


@dataclass
class _Ahead:
    """One piece of work in the background: the file's identity when it started, then its result or error."""

    identity: tuple[int, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


_lock = threading.Lock()
_ahead: dict[tuple[str, str], _Ahead] = {}


def _identity(path: str) -> tuple[int, ...]:
    """What tells a changed file from the one read ahead: device, inode, size, modification time."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def start(path: str | os.PathLike[str], kind: str, produce: Callable[[str], Any]) -> bool:
    """Run ``produce(real path)`` in a background thread for the next :func:`take` of ``path``, ``kind``.

    Returns whether it started (``False``: the file cannot be stat'ed, or the same work runs already).
    The result is held until taken or :func:`forget`.
    """
    key = (kind, os.path.realpath(path))
    try:
        ahead = _Ahead(_identity(key[1]))
    except OSError:
        return False
    with _lock:
        if key in _ahead:
            return False
        _ahead[key] = ahead

    def run() -> None:
        try:
            ahead.result = produce(key[1])
        except BaseException as err:  # raised by the take() of it, as doing the work then would raise it
            ahead.error = err
        finally:
            ahead.done.set()

    threading.Thread(target=run, name=f"medfcn-ahead-{kind}", daemon=True).start()
    return True


def take(path: str | os.PathLike[str], kind: str) -> tuple[bool, Any]:
    """``(True, result)`` of the work :func:`start` began on ``path`` if the file has not changed since
    (waiting for it to end), else ``(False, None)``. Either way the entry is dropped: one take per start.

    Raises:
        whatever ``produce`` raised.
    """
    key = (kind, os.path.realpath(path))
    with _lock:
        ahead = _ahead.pop(key, None)
    if ahead is None:
        return False, None
    try:
        same = ahead.identity == _identity(key[1])
    except OSError:
        same = False
    if not same:
        return False, None
    ahead.done.wait()
    if ahead.error is not None:
        raise ahead.error
    return True, ahead.result


def forget() -> None:
    """Drop every result not taken (running work finishes and is freed)."""
    with _lock:
        _ahead.clear()


def pending() -> list[tuple[str, str]]:
    """``(kind, real path)`` of the work started and not taken (for tests and diagnostics)."""
    with _lock:
        return list(_ahead)
