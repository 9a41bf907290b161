"""MONAI Deploy application: a CT study folder in, a DICOM SEG (and a NIfTI mask) out, for any medfcn bundle.

The pipeline follows Deploy's ``examples/apps/ai_spleen_seg_app``::

    DICOMDataLoaderOperator ─► SeriesSelector (rules JSON) ─► SeriesToVolume ─► BundleInference ─► DICOMSegmentationWriterOperator
                                        │                            │                 │
                                        └──────── selected series ───┼─────────────────┴─► NiftiMaskWriter (optional)
                                                                     └──── source volume (affine) ───┘

The bundle is the exported TorchScript (``medfcn export``): ``models/model.ts`` carries ``metadata.json``
and a self-contained ``inference.json``, and ``MonaiBundleInferenceOperator`` runs that config's
``preprocessing`` / ``inferer`` / ``postprocessing`` (it drops ``LoadImage*`` and ``SaveImage*``, which
deal with files, because Deploy hands over an in-memory volume and takes the mask back in memory).
Segment labels and codes come from medfcn's one segment-coding table,
:func:`medfcn.data.dicom.segment_codes.class_table`: the bundle metadata's ``medfcn.classes`` (SNOMED codes,
modifiers), else the name table, else a local ``99MEDFCN`` code; ``medfcn infer`` writes the same codes
(``tests/workflows/test_deploy_codes.py``).

Three small subclasses keep the result identical to ``medfcn infer`` on the same series (the test in
``tests/workflows`` checks it voxel for voxel):

* ``SeriesSelector`` adds ``"MinSlices"`` to the SDK's rule language (a scan with a few slices is a
  localizer, not a volume to segment).
* ``SeriesToVolume`` fixes the SDK's affine for non-square pixels: ``PixelSpacing`` is (between rows,
  between columns), so the column index (array axis 0 after the operator's DHW->WHD swap) steps by
  ``PixelSpacing[1]``; the SDK uses ``PixelSpacing[0]`` for it.
* ``BundleInference`` casts the volume to the dtype of the bundle's ``LoadImaged`` (float32 unless set):
  the SDK hands over the rescaled pixels as int16/uint16 and has removed the ``LoadImaged`` that would
  have cast them. MONAI's ``Spacingd`` happens to return float32 anyway (measured: the same mask with
  and without the cast on the liver bundle), but a bundle whose transforms keep the input dtype would
  otherwise compute on integers.

Run locally (see README.md)::

    HOLOSCAN_INPUT_PATH=study/ HOLOSCAN_OUTPUT_PATH=out/ HOLOSCAN_MODEL_PATH=bundles/liver/models/model.ts \\
        python workflows/liver_seg_app
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Fragment, Image, Operator, OperatorSpec
from monai.deploy.core.app_context import init_app_context
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import (
    DICOMSegmentationWriterOperator,
    SegmentDescription,
)
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from pydicom.sr.codedict import codes

from medfcn.data.dicom.segment_codes import algorithm_title, apply_modifier, class_table, to_code

__all__ = [
    "BundleInference",
    "CodedSegment",
    "LiverSegApp",
    "NiftiMaskWriter",
    "SeriesSelector",
    "SeriesToVolume",
    "find_model_file",
    "read_bundle_metadata",
    "segment_descriptions",
]

APP_DIR = Path(__file__).resolve().parent
RULES_FILE = APP_DIR / "series_selection_rules.json"
MIN_SLICES_KEY = "MinSlices"


class CodedSegment(SegmentDescription):
    """Deploy's ``SegmentDescription`` plus the property-type modifier it does not take (e.g. Anterior)."""

    def __init__(self, *args: Any, modifier: tuple[str, str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modifier = modifier

    def to_segment_description(self, segment_number: int) -> Any:
        return apply_modifier(super().to_segment_description(segment_number), self.modifier)


def find_model_file(model_path: str | os.PathLike[str]) -> Path:
    """The TorchScript bundle behind ``HOLOSCAN_MODEL_PATH``: the file itself, or the one ``model.ts``
    found under a folder (a MAP puts it at ``/opt/holoscan/models/<name>/model.ts``)."""
    path = Path(model_path)
    if path.is_file():
        return path
    found = sorted(path.rglob("model.ts")) if path.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: expected a model.ts file (medfcn export) or a folder holding exactly one; found {len(found)}"
        )
    return found[0]


def read_bundle_metadata(model_file: Path) -> dict:
    """``metadata.json`` embedded in the TorchScript file (read from the zip, without loading torch)."""
    with zipfile.ZipFile(model_file) as archive:
        names = [n for n in archive.namelist() if n.endswith("/extra/metadata.json")]
        if not names:
            raise ValueError(f"{model_file}: no embedded metadata.json; export the bundle with medfcn export")
        return dict(json.loads(archive.read(names[0])))


def segment_descriptions(metadata: dict) -> list[SegmentDescription]:
    """One coded ``SegmentDescription`` per foreground class of the bundle (medfcn's class table).

    The DICOM SEG writer numbers segments from 1 in this order, matching label values 1..N.
    """
    name = str(metadata.get("name", "medfcn bundle"))[:64]
    version = str(metadata.get("version", "0"))[:64]
    descriptions: list[SegmentDescription] = []
    for _value, info in sorted(class_table(metadata).items()):
        descriptions.append(
            CodedSegment(
                segment_label=info.name[:64],
                segmented_property_category=to_code(info.category),
                segmented_property_type=to_code(info.type),
                algorithm_name=algorithm_title(name, version),
                algorithm_family=codes.DCM.ArtificialIntelligence,
                algorithm_version=version,
                anatomic_regions=[to_code(info.anatomic_region)] if info.anatomic_region else None,
                modifier=info.modifier,
            )
        )
    return descriptions


class SeriesSelector(DICOMSeriesSelectorOperator):
    """The SDK's rule-based selector with two conditions evaluated here.

    * ``"MinSlices": N`` — at least N instances in the series (a few-slice scan is a localizer or a
      partial acquisition, not a volume to segment).
    * ``"ImageOrientationPatient": "Axial"`` — the SDK's own plane test, but without its demand for a
      ``PatientPosition`` tag (it raises ``NotImplementedError`` when the tag is absent): the plane
      follows from ImageOrientationPatient alone, which is already in patient coordinates.
    """

    def _select_series(self, attributes, study, all_matched=False, sort_by_sop_instance_count=False):  # type: ignore[no-untyped-def]
        conditions = dict(attributes)
        min_slices = int(conditions.pop(MIN_SLICES_KEY, 0) or 0)
        plane = conditions.pop("ImageOrientationPatient", None)
        found = super()._select_series(conditions, study, True, sort_by_sop_instance_count)
        kept = []
        for series in found:
            instances = series.get_sop_instances()
            if len(instances) < min_slices:
                logging.info(f"Series skipped: {len(instances)} slices < {MIN_SLICES_KEY}={min_slices}")
                continue
            if plane:
                iop = instances[0].get_native_sop_instance().get("ImageOrientationPatient")
                if iop is None or not self._match_image_orientation(
                    plane, [f"[{', '.join(str(float(v)) for v in iop)}]"]
                ):
                    logging.info(f"Series skipped: not {plane}")
                    continue
            kept.append(series)
        return kept if all_matched else kept[:1]


class SeriesToVolume(DICOMSeriesToVolumeOperator):
    """The SDK's volume builder with the in-plane spacing assigned to the right axes."""

    def compute_affine_transform(self, s_1, s_n, n, series):  # type: ignore[no-untyped-def]
        super().compute_affine_transform(s_1, s_n, n, series)
        spacing = [float(v) for v in s_1[0x0028, 0x0030].value]  # (between rows, between columns)
        if abs(spacing[0] - spacing[1]) > 1e-6:
            # The SDK scaled the row-direction column (axis 0) by spacing[0] and axis 1 by spacing[1].
            for name in (self.ATTRIBUTE_DICOM_AFFINE, self.ATTRIBUTE_NIFTI_AFFINE):
                affine = np.array(getattr(series, name), dtype=float)
                affine[:3, 0] *= spacing[1] / spacing[0]
                affine[:3, 1] *= spacing[0] / spacing[1]
                setattr(series, name, affine)


class BundleInference(MonaiBundleInferenceOperator):
    """The SDK's bundle operator, feeding the network the dtype the bundle's ``LoadImaged`` produces."""

    def _receive_input(self, name, op_input, context):  # type: ignore[no-untyped-def]
        value, metadata = super()._receive_input(name, op_input, context)
        dtype = self._load_dtype()
        if isinstance(value, np.ndarray) and value.dtype != dtype:
            value = value.astype(dtype)
        elif hasattr(value, "dtype") and hasattr(value, "to") and str(value.dtype) != f"torch.{dtype.name}":
            import torch

            value = value.to(getattr(torch, dtype.name))
        return value, metadata

    def _load_dtype(self) -> np.dtype:
        # The first preprocessing transform of a medfcn bundle is LoadImaged; its `dtype` (MONAI's
        # default: float32) is what training and `medfcn infer` saw.
        loader = (
            self.parser.get(f"{self._bundle_config_names.preproc_name}#transforms#0", {})
            if self.parser
            else {}
        )
        dtype = loader.get("dtype", "float32") if isinstance(loader, dict) else "float32"
        if isinstance(dtype, str):
            dtype = dtype.split(".")[-1].lstrip("$")
        try:
            return np.dtype(dtype)
        except TypeError:
            return np.dtype(np.float32)


class NiftiMaskWriter(Operator):
    """Writes the label mask as NIfTI on the source volume's grid (affine from the DICOM geometry).

    Named inputs:
        seg_image: the mask ``Image`` from the bundle operator, array (D, H, W) uint8.
        image: the source volume ``Image`` (its metadata ``affine`` is the RAS affine of the series).
    """

    def __init__(self, fragment: Fragment, *args: Any, output_file: Path, **kwargs: Any) -> None:
        self.output_file = Path(output_file)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")
        spec.input("image")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        import nibabel as nib

        seg = op_input.receive("seg_image")
        source = op_input.receive("image")
        mask = np.swapaxes(np.asarray(seg.asnumpy()), 0, 2)  # (D, H, W) -> (W, H, D), the RAS affine's order
        affine = np.asarray(source.metadata()["affine"], dtype=float)
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a temporary name in the same folder, then rename.
        fd, tmp = tempfile.mkstemp(dir=self.output_file.parent, prefix=".seg-", suffix=".nii.gz")
        os.close(fd)
        try:
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.output_file)
        finally:
            Path(tmp).unlink(missing_ok=True)


class LiverSegApp(Application):
    """DICOM CT study -> series selection -> medfcn bundle (TorchScript) -> DICOM SEG (+ NIfTI mask).

    Paths come from ``HOLOSCAN_INPUT_PATH`` (a folder of DICOM files, searched recursively),
    ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH`` (``model.ts`` or a folder holding one), or
    from ``-i/-o/-m`` on the command line. ``MEDFCN_SERIES_RULES`` may point to another rules file and
    ``MEDFCN_NIFTI=0`` turns the NIfTI output off.
    """

    def compose(self) -> None:
        # Command-line -i/-o/-m/-l override the HOLOSCAN_* variables (the SDK's own parser). The SDK
        # logs Study/Series/SOP Instance UIDs at INFO; default to WARN so they stay out of the logs.
        argv = list(sys.argv)
        if not any(a in ("-l", "--log-level") or a.startswith("--log-level=") for a in argv[1:]):
            argv += ["--log-level", os.environ.get("MEDFCN_LOG_LEVEL", "WARN")]
        app_context: AppContext = init_app_context(argv)
        input_path = Path(app_context.input_path)
        output_path = Path(app_context.output_path)
        model_file = find_model_file(app_context.model_path)
        if Path(app_context.model_path).is_dir() and model_file.parent == Path(app_context.model_path):
            # A bundle's models/ folder: the SDK's model factory expects <folder>/<name>/model.ts (the
            # MAP layout) and would register a model without a predictor; point it at the file.
            app_context.update({"model": str(model_file)})
        metadata = read_bundle_metadata(model_file)
        rules = Path(os.environ.get("MEDFCN_SERIES_RULES", RULES_FILE)).read_text(encoding="utf-8")
        logging.info(f"Bundle {metadata.get('name')} {metadata.get('version')} from {model_file}")

        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_path, name="study_loader_op"
        )
        selector = SeriesSelector(self, rules=rules, name="series_selector_op")
        to_volume = SeriesToVolume(self, name="series_to_vol_op")
        inference = BundleInference(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=model_file,
            name="bundle_inference_op",
        )
        seg_writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=segment_descriptions(metadata),
            custom_tags={
                "SeriesDescription": f"{str(metadata.get('name', 'medfcn'))[:34]} AI seg, not for clinical use"
            },
            output_folder=output_path,
            name="dicom_seg_writer",
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, inference, {("image", "image")})
        self.add_flow(selector, seg_writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(inference, seg_writer, {("pred", "seg_image")})
        if os.environ.get("MEDFCN_NIFTI", "1") != "0":
            nifti = NiftiMaskWriter(
                self, output_file=output_path / "segmentation.nii.gz", name="nifti_writer"
            )
            self.add_flow(inference, nifti, {("pred", "seg_image")})
            self.add_flow(to_volume, nifti, {("image", "image")})


def main() -> None:
    """Run the app; logs the wall time (per series: the app processes one selected series per run)."""
    start = time.perf_counter()
    LiverSegApp().run()
    # On stdout, whatever the log level: the time of one run = one selected series.
    print(f"medfcn deploy app: series processed in {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
