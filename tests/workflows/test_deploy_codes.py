"""The Deploy app and ``medfcn infer`` write the same segment codes for the same bundle (one coding table)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from medfcn.bundle import load_bundle
from medfcn.data.dicom.seg import segment_descriptions
from medfcn.data.dicom.segment_codes import class_table

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "workflows" / "liver_seg_app"

HIPPOCAMPUS_META: dict[str, Any] = {
    "name": "hippocampus",
    "version": "0.1.0",
    "network_data_format": {
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "anterior", "2": "posterior"}}}
    },
    "medfcn": {
        "classes": {
            "1": {
                "name": "anterior",
                "category": ["SCT", "91723000", "Anatomical Structure"],
                "type": ["SCT", "5366008", "Hippocampus"],
                "modifier": ["SCT", "255549009", "Anterior"],
                "volume_ml": [0.8, 3.5],
            },
            "2": {
                "name": "posterior",
                "category": ["SCT", "91723000", "Anatomical Structure"],
                "type": ["SCT", "5366008", "Hippocampus"],
                "modifier": ["SCT", "255551008", "Posterior"],
                "volume_ml": [0.7, 3.0],
            },
        },
        "preview_window": "percentile",
    },
}

_DUMP = """
import json, sys
sys.path.insert(0, sys.argv[1])
import app

def code(seq):
    return [seq[0].CodingSchemeDesignator, seq[0].CodeValue, seq[0].CodeMeaning] if seq else None

out = []
for meta in json.loads(sys.stdin.read()):
    rows = []
    for i, d in enumerate(app.segment_descriptions(meta), start=1):
        s = d.to_segment_description(i)
        t = s.SegmentedPropertyTypeCodeSequence
        rows.append([s.SegmentNumber, s.SegmentLabel, code(s.SegmentedPropertyCategoryCodeSequence), code(t),
                     code(t[0].get("SegmentedPropertyTypeModifierCodeSequence")), s.SegmentAlgorithmName,
                     code(s.get("AnatomicRegionSequence"))])
    out.append(rows)
print(json.dumps(out))
"""


def _rows(meta: dict[str, Any]) -> list[list[Any]]:
    def code(seq: Any) -> list[str] | None:
        return [seq[0].CodingSchemeDesignator, seq[0].CodeValue, seq[0].CodeMeaning] if seq else None

    rows = []
    for s in segment_descriptions(
        class_table(meta), algorithm_name=str(meta["name"]), algorithm_version=str(meta["version"])
    ):
        t = s.SegmentedPropertyTypeCodeSequence
        rows.append(
            [
                int(s.SegmentNumber),
                s.SegmentLabel,
                code(s.SegmentedPropertyCategoryCodeSequence),
                code(t),
                code(t[0].get("SegmentedPropertyTypeModifierCodeSequence")),
                s.SegmentAlgorithmName,
                code(s.get("AnatomicRegionSequence")),
            ]
        )
    return rows


def test_medfcn_codes_come_from_the_bundle_metadata() -> None:
    liver = _rows(load_bundle(REPO / "bundles" / "liver").metadata)
    assert liver == [
        [1, "liver", ["SCT", "91723000", "Anatomical Structure"], ["SCT", "10200004", "Liver"], None,
         "medfcn liver bundle " + load_bundle(REPO / "bundles" / "liver").metadata["version"], None],
        [2, "tumour", ["SCT", "49755003", "Morphologically Abnormal Structure"], ["SCT", "108369006", "Neoplasm"],
         None, "medfcn liver bundle " + load_bundle(REPO / "bundles" / "liver").metadata["version"],
         ["SCT", "10200004", "Liver"]],
    ]  # fmt: skip
    hippo = _rows(HIPPOCAMPUS_META)
    assert [r[4] for r in hippo] == [["SCT", "255549009", "Anterior"], ["SCT", "255551008", "Posterior"]]
    assert {tuple(r[3]) for r in hippo} == {("SCT", "5366008", "Hippocampus")}
    assert all(r[5] == "medfcn hippocampus bundle 0.1.0" for r in hippo)  # the algorithm, not the class


def test_deploy_app_writes_the_same_codes(deploy_python: Path) -> None:
    metas = [load_bundle(REPO / "bundles" / "liver").metadata, HIPPOCAMPUS_META]
    result = subprocess.run(
        [str(deploy_python), "-c", _DUMP, str(APP)],
        input=json.dumps(metas),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    deploy = json.loads(result.stdout.strip().splitlines()[-1])
    assert deploy == [_rows(m) for m in metas]


def test_the_deploy_app_has_no_coding_table_of_its_own() -> None:
    """One coding table: the app imports medfcn's and spells no SNOMED code itself."""
    import re

    for path in sorted(APP.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"""["'](SCT|SRT|99MEDFCN)["']""", code), f"{path.name} spells segment codes"
    app = (APP / "app.py").read_text(encoding="utf-8")
    assert "from medfcn.data.dicom.segment_codes import" in app
