"""What each class of a bundle is: its name, DICOM segment codes, plausible volume, preview window.

The one segment-coding table of medfcn. Every writer of class information goes through it: the DICOM SEG
and RTSTRUCT writers, ``labels.json``, the QC volume flags, and the MONAI Deploy app in ``workflows/``.

Where it comes from, in order:

1. the bundle's ``configs/metadata.json``, key ``medfcn``::

       "medfcn": {
         "classes": {
           "1": {"name": "anterior", "category": ["SCT", "91723000", "Anatomical Structure"],
                 "type": ["SCT", "5366008", "Hippocampus"], "modifier": ["SCT", "255549009", "Anterior"],
                 "volume_ml": [0.8, 3.5]}
         },
         "preview_window": "percentile"
       }

   (``modifier``, ``anatomic_region`` and ``volume_ml`` are optional; ``preview_window`` is ``[low, high]``
   in image units or ``"percentile"`` for the 0.5-99.5 % range of each image);
2. for a class the bundle does not code, :data:`KNOWN_CLASSES` by (lower-case) class name;
3. else a local code (scheme ``99MEDFCN``, DICOM PS3.16 8.2's private "99" prefix) that names the class.

Class ids and names come from ``network_data_format.outputs.pred.channel_def`` unless ``medfcn.classes``
gives them.

Example:
    >>> table = class_table({"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "liver"}}}}})
    >>> table[1].type
    ('SCT', '10200004', 'Liver')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from medfcn.errors import BundleError

__all__ = [
    "KNOWN_CLASSES",
    "LOCAL_SCHEME",
    "ClassInfo",
    "Code",
    "algorithm_title",
    "apply_modifier",
    "as_class_table",
    "class_table",
    "labels_document",
    "preview_window",
    "to_code",
    "volume_ranges",
]

Code = tuple[str, str, str]
"""A coded concept as ``(scheme designator, code value, code meaning)``, e.g. ``("SCT", "10200004", "Liver")``."""

LOCAL_SCHEME = "99MEDFCN"

_ANATOMICAL_STRUCTURE: Code = ("SCT", "91723000", "Anatomical Structure")
_ABNORMAL: Code = ("SCT", "49755003", "Morphologically Abnormal Structure")
_TISSUE: Code = ("SCT", "85756007", "Tissue")
_LIVER: Code = ("SCT", "10200004", "Liver")

KNOWN_CLASSES: dict[str, tuple[Code, Code, Code | None]] = {
    "liver": (_ANATOMICAL_STRUCTURE, _LIVER, None),
    "spleen": (_ANATOMICAL_STRUCTURE, ("SCT", "78961009", "Spleen"), None),
    "kidney": (_ANATOMICAL_STRUCTURE, ("SCT", "64033007", "Kidney"), None),
    "pancreas": (_ANATOMICAL_STRUCTURE, ("SCT", "15776009", "Pancreas"), None),
    "lung": (_ANATOMICAL_STRUCTURE, ("SCT", "39607008", "Lung"), None),
    "heart": (_ANATOMICAL_STRUCTURE, ("SCT", "80891009", "Heart"), None),
    "brain": (_ANATOMICAL_STRUCTURE, ("SCT", "12738006", "Brain"), None),
    "prostate": (_ANATOMICAL_STRUCTURE, ("SCT", "41216001", "Prostate"), None),
    "hippocampus": (_ANATOMICAL_STRUCTURE, ("SCT", "5366008", "Hippocampus"), None),
    "tumour": (_ABNORMAL, ("SCT", "108369006", "Neoplasm"), None),
    "tumor": (_ABNORMAL, ("SCT", "108369006", "Neoplasm"), None),
    "neoplasm": (_ABNORMAL, ("SCT", "108369006", "Neoplasm"), None),
    "lesion": (_ABNORMAL, ("SCT", "52988006", "Lesion"), None),
}
"""Fallback codes by class name: ``name -> (category, type, modifier)`` (SNOMED CT, as in DICOM CID 7150/7151)."""

_LESION_NAMES = {"tumour", "tumor", "neoplasm", "lesion", "cancer", "mass"}


@dataclass(frozen=True)
class ClassInfo:
    """One foreground class of a bundle.

    Attributes:
        value: the label value (segment number) in the mask.
        name: the class name (SegmentLabel, ROIName, ``labels.json`` name).
        category: SegmentedPropertyCategory code.
        type: SegmentedPropertyType code.
        modifier: SegmentedPropertyTypeModifier code, if any.
        anatomic_region: AnatomicRegion code, if any (a liver lesion lies in the liver).
        volume_ml: plausible ``(low, high)`` volume in mL for the QC flags, if the bundle gives one.
        source: where the codes came from: ``"bundle"``, ``"table"`` (:data:`KNOWN_CLASSES`) or ``"local"``.
    """

    value: int
    name: str
    category: Code
    type: Code
    modifier: Code | None = None
    anatomic_region: Code | None = None
    volume_ml: tuple[float, float] | None = None
    source: Literal["bundle", "table", "local"] = "table"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the entry of ``labels.json``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "category": list(self.category),
            "type": list(self.type),
        }
        if self.modifier is not None:
            out["modifier"] = list(self.modifier)
        if self.anatomic_region is not None:
            out["anatomic_region"] = list(self.anatomic_region)
        if self.volume_ml is not None:
            out["volume_ml"] = list(self.volume_ml)
        out["codes_from"] = self.source
        return out


def _code(value: Any, where: str) -> Code:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise BundleError(f"{where} must be [scheme, value, meaning] (three strings), found {value!r}")
    return (str(value[0]), str(value[1]), str(value[2]))


def _local(name: str) -> Code:
    key = "".join(ch for ch in name.strip().lower() if ch.isalnum() or ch in "-_")[:16] or "class"
    return (LOCAL_SCHEME, key, name[:64] or "class")


def _channel_def(metadata: Mapping[str, Any]) -> dict[int, str]:
    try:
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {int(k): str(v) for k, v in channel_def.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def class_table(
    metadata: Mapping[str, Any], class_names: Mapping[int, str] | None = None
) -> dict[int, ClassInfo]:
    """The foreground classes of a bundle with their codes (see the module docstring for the order).

    Args:
        metadata: the bundle's ``metadata.json`` content.
        class_names: label value -> name, overriding ``channel_def`` (e.g. a :class:`Segmenter`'s names).

    Returns:
        label value -> :class:`ClassInfo`, background (0) left out, sorted by value.

    Raises:
        BundleError: a malformed ``medfcn.classes`` entry (code not a triple, bad volume range).
    """
    extra = metadata.get("medfcn") if isinstance(metadata, Mapping) else None
    coded_raw = (extra or {}).get("classes") if isinstance(extra, Mapping) else None
    coded: dict[int, Mapping[str, Any]] = {}
    if coded_raw is not None:
        if not isinstance(coded_raw, Mapping):
            raise BundleError(
                f"metadata medfcn.classes must be an object of label value -> class, found {coded_raw!r}"
            )
        for key, entry in coded_raw.items():
            try:
                value = int(key)
            except ValueError as err:
                raise BundleError(f"metadata medfcn.classes key {key!r} is not a label value") from err
            if not isinstance(entry, Mapping):
                raise BundleError(f"metadata medfcn.classes[{key}] must be an object, found {entry!r}")
            coded[value] = entry
    names = dict(class_names) if class_names is not None else _channel_def(metadata)
    for value, entry in coded.items():
        if value not in names and entry.get("name"):
            names[value] = str(entry["name"])
    has_liver = any(n.strip().lower() == "liver" for n in names.values())
    out: dict[int, ClassInfo] = {}
    for value in sorted(names):
        if value == 0:
            continue
        entry = coded.get(value)
        name = str(entry.get("name") or names[value]) if entry else names[value]
        where = f"metadata medfcn.classes[{value}]"
        volume: tuple[float, float] | None = None
        if entry and entry.get("volume_ml") is not None:
            v = entry["volume_ml"]
            try:
                low, high = float(v[0]), float(v[1])
            except (TypeError, ValueError, IndexError, KeyError) as err:
                raise BundleError(f"{where}.volume_ml must be [low, high] in mL, found {v!r}") from err
            if not 0 <= low <= high or len(v) != 2:
                raise BundleError(f"{where}.volume_ml must be [low, high] with 0 <= low <= high, found {v!r}")
            volume = (low, high)
        if entry and entry.get("type") is not None:
            out[value] = ClassInfo(
                value=value,
                name=name,
                category=_code(entry.get("category", _ANATOMICAL_STRUCTURE), f"{where}.category"),
                type=_code(entry["type"], f"{where}.type"),
                modifier=_code(entry["modifier"], f"{where}.modifier") if entry.get("modifier") else None,
                anatomic_region=(
                    _code(entry["anatomic_region"], f"{where}.anatomic_region")
                    if entry.get("anatomic_region")
                    else None
                ),
                volume_ml=volume,
                source="bundle",
            )
            continue
        key = name.strip().lower()
        known = KNOWN_CLASSES.get(key)
        region = _LIVER if key in _LESION_NAMES and has_liver else None
        if known is not None:
            out[value] = ClassInfo(value, name, known[0], known[1], known[2], region, volume, "table")
        else:
            out[value] = ClassInfo(value, name, _TISSUE, _local(name), None, region, volume, "local")
    return out


def apply_modifier(description: Any, modifier: Code | None) -> Any:
    """Put ``modifier`` into a SEG segment description's SegmentedPropertyTypeModifierCodeSequence.

    highdicom's ``SegmentDescription`` (and Deploy's) take no modifier; DICOM nests it inside the
    Segmented Property Type item (PS3.3 C.8.20.2). Returns ``description``, changed in place.
    """
    if modifier is None:
        return description
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = modifier[1], modifier[0], modifier[2]
    description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [item]
    return description


def algorithm_title(bundle: str, version: str) -> str:
    """What SEG/RTSTRUCT record as the algorithm (SegmentAlgorithmName): ``"medfcn <bundle> bundle <version>"``.

    Not the class name: a reader must be able to tell which model and which version drew a segment.
    """
    return f"medfcn {bundle} bundle {version}"[:64]


def as_class_table(classes: Mapping[int, ClassInfo] | Mapping[int, str]) -> dict[int, ClassInfo]:
    """Class records as they are, or coded from names (name table, then local codes); background dropped."""
    out: dict[int, ClassInfo] = {}
    names: dict[int, str] = {}
    for key, value in classes.items():
        if int(key) == 0:
            continue
        if isinstance(value, ClassInfo):
            out[int(key)] = value
        else:
            names[int(key)] = str(value)
    if names:
        out.update(class_table({}, names))
    return dict(sorted(out.items()))


def volume_ranges(table: Mapping[int, ClassInfo]) -> dict[str, tuple[float, float]]:
    """Class name -> plausible ``(low, high)`` mL for the classes whose bundle gives ``volume_ml``."""
    return {c.name: c.volume_ml for c in table.values() if c.volume_ml is not None}


def preview_window(metadata: Mapping[str, Any]) -> tuple[float, float] | Literal["percentile"] | None:
    """The bundle's ``medfcn.preview_window``: ``(low, high)``, ``"percentile"``, or ``None`` if not set.

    Raises:
        BundleError: neither a pair of numbers with low < high nor ``"percentile"``.
    """
    extra = metadata.get("medfcn") if isinstance(metadata, Mapping) else None
    window = extra.get("preview_window") if isinstance(extra, Mapping) else None
    if window is None:
        return None
    if window == "percentile":
        return "percentile"
    try:
        low, high = float(window[0]), float(window[1])
    except (TypeError, ValueError, IndexError, KeyError) as err:
        raise BundleError(
            f'metadata medfcn.preview_window must be [low, high] or "percentile", found {window!r}'
        ) from err
    if not low < high or len(window) != 2:
        raise BundleError(f"metadata medfcn.preview_window must have low < high, found {window!r}")
    return (low, high)


def labels_document(table: Mapping[int, ClassInfo], *, bundle: str, version: str) -> dict[str, Any]:
    """The content of ``labels.json``: every output of a run can be read without the bundle."""
    return {
        "bundle": {"name": bundle, "version": version},
        "background": 0,
        "classes": {str(v): c.to_dict() for v, c in sorted(table.items())},
    }


def to_code(code: Code) -> Any:
    """``code`` as a highdicom ``CodedConcept`` (usable wherever pydicom/highdicom take a ``Code``)."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
