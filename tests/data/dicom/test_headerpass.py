"""The header pass on worker processes finds what one process finds, templates included."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfcn.data.dicom.headerpass import workers
from medfcn.data.discovery import find_cases
from medfcn.data.synthetic import make_phantom, write_dicom_series


def test_worker_processes_give_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ph = make_phantom((10, 9, 5), seed=2, noise_hu=0.0)
    for k in range(3):
        write_dicom_series(ph.image, ph.affine, tmp_path / f"p{k}" / "series", seed=20 + k)
    (tmp_path / "p0" / "junk.bin").write_bytes(b"\x00" * 300)
    monkeypatch.delenv("MEDFCN_DISCOVERY_WORKERS", raising=False)
    assert workers(10_000) == 1
    with find_cases(tmp_path) as one:
        monkeypatch.setenv("MEDFCN_DISCOVERY_WORKERS", "2")
        assert workers(10_000) == 2
        with find_cases(tmp_path) as two:
            assert one.to_dict() == two.to_dict()
            for a, b in zip(one.cases, two.cases, strict=True):
                assert a.geometry is not None and b.geometry is not None
                assert [h.path for h in a.geometry.headers] == [h.path for h in b.geometry.headers]
                assert sum(h.template is not None for h in b.geometry.headers) == 1  # one raw header per series
