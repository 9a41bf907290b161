"""The real DICOM SEG references in ../shared/data (dcmqi's test segmentations), shared by the tests that
read them (imported by name: a unique module, not ``conftest``)."""

from __future__ import annotations

from pathlib import Path

import pytest

DCMQI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom-seg-references" / "dcmqi" / "segmentations"
needs_dcmqi = pytest.mark.skipif(not DCMQI.is_dir(), reason=f"real DICOM references missing: {DCMQI}")
