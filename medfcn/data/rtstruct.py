"""Moved to :mod:`medfcn.data.dicom.rtstruct`; this name stays importable (the same module object)."""

import sys

from medfcn.data.dicom import rtstruct as _moved
from medfcn.data.dicom.rtstruct import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _moved
