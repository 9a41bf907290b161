"""Moved to :mod:`medfcn.data.dicom.seg_labels`; this name stays importable (the same module object)."""

import sys

from medfcn.data.dicom import seg_labels as _moved
from medfcn.data.dicom.seg_labels import *  # noqa: F403  (the names, for type checkers)

sys.modules[__name__] = _moved
