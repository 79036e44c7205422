"""Clinical masks as they come: DICOM RTSTRUCT and DICOM-SEG files on the image grid.

:func:`read_dicom_mask` is the one entry point: given a case whose ``mask`` is an
RTSTRUCT or SEG file (:func:`dicom_kind` tells), it returns a uint8 mask (1 inside
the ROI) on the image's grid, cached by file hash, ROI, grid and rule.
See :mod:`.rtstruct` for the rasterisation rule.
"""

from __future__ import annotations

import logging
from pathlib import Path

import SimpleITK as sitk

from ..errors import CaseError
from . import cache
from .dicomfiles import dicom_kind, read_dataset, series_slices

__all__ = ["dicom_kind", "read_dicom_mask"]

log = logging.getLogger(__name__)


def read_dicom_mask(kind: str, mask_path: Path, image_path: Path, image: sitk.Image, case_id: str, *,
                    roi: str | int | None = None, cache_dir: Path | None = None,
                    notes: list[str] | None = None, seg_threshold: float = 0.5) -> sitk.Image:
    """The ROI of the RTSTRUCT/SEG ``mask_path`` as a uint8 mask on ``image``'s grid.

    What was chosen or reported (which ROI, contours off the slices) is appended to
    ``notes``. Problems raise :class:`~radiodeep.errors.CaseError`."""
    from .dicom_seg import RULE_VERSION as SEG_RULE
    from .dicom_seg import read_seg_mask
    from .rtstruct import RULE_VERSION as RT_RULE
    from .rtstruct import rasterise_rtstruct

    mask_path = Path(mask_path)
    if image.GetDimension() != 3:
        raise CaseError(case_id, f"an RTSTRUCT or DICOM-SEG mask needs a 3D image (a DICOM series folder); "
                                 f"the image is {image.GetDimension()}D")
    slices = series_slices(Path(image_path), image, case_id)
    rule = RT_RULE if kind == "rtstruct" else SEG_RULE
    key = cache.mask_key(mask_path, image, slices, roi, rule, None if kind == "rtstruct" else seg_threshold)
    hit = cache.load(cache_dir, key, image)
    if hit is not None:
        if notes is not None:
            notes.extend(hit[1])
        return hit[0]
    said: list[str] = []
    ds = read_dataset(mask_path, case_id, "RTSTRUCT" if kind == "rtstruct" else "DICOM-SEG")
    if kind == "rtstruct":
        mask = rasterise_rtstruct(mask_path, image, slices, roi, case_id, said, ds=ds)
    else:
        mask = read_seg_mask(mask_path, image, slices, roi, case_id, said, threshold=seg_threshold, ds=ds)
    try:
        cache.save(cache_dir, key, mask, said)
    except OSError as err:  # a cache that cannot be written costs time, not the case
        log.warning("case %s: mask not cached in %s (%s)", case_id, cache_dir, err.strerror or err)
    if notes is not None:
        notes.extend(said)
    return mask
