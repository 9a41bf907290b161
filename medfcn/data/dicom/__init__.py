"""The DICOM wing of medfcn: headers in, geometry checked once, derived objects out.

=====================  ====================================================================
module                 what it holds
=====================  ====================================================================
``headers``            ``DicomHeader``, ``read_header`` (one open per file)
``rawscan``            the fast raw-element header scan (pydicom for anything unusual)
``headerpass``         the header pass of discovery (worker processes on request)
``objects``            what a file holds: image, or a non-image object skipped with its reason
``geometry``           ``SeriesGeometry``, ``validate_series`` (sort, checks, affine)
``series``             grouping by SeriesInstanceUID, the series checks, ``series_geometry``
``enhanced``           enhanced multi-frame CT/MR/PET: per-frame functional groups
``sources``            source datasets of derived objects, built from a geometry without re-reading
``seg``                DICOM SEG writing (highdicom), frame by frame on the source frames
``rtstruct``           RT Structure Sets: closed planar contours along the mask's pixel edges
``seg_labels``         a DICOM SEG as a ground-truth label map of its series
``segment_codes``      the one segment-coding table (bundle classes -> names and SNOMED codes)
``values``             DS/IS values as numbers
``synthetic``          synthetic DICOM series (tests, ``medfcn data synth --dicom``, the benchmark)
=====================  ====================================================================

Discovery (:mod:`medfcn.data.discovery`) is the only caller that groups headers into cases; the reader
(:mod:`medfcn.data.readers`) and the writers take the
:class:`~medfcn.data.dicom.geometry.SeriesGeometry` a case carries. Import the modules themselves
(``from medfcn.data.dicom.seg import write_dicom_seg``): this package face stays empty and light.
"""

__all__: list[str] = []
