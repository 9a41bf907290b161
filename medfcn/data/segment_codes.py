"""Moved to :mod:`medfcn.data.dicom.segment_codes`; this name stays importable (the same module object)."""

import sys

from medfcn.data.dicom import segment_codes as _moved
from medfcn.data.dicom.segment_codes import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _moved
