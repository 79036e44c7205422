"""Reading images and masks (NIfTI, NRRD, MHA, DICOM series) and checking geometry.

No DICOM header field is ever copied out of here: callers get pixel data and
geometry only, so the manifest's case id is the only identifier that leaves the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CaseError

__all__ = ["read_image", "geometry_mismatch", "resample_like", "mask_labels", "read_case_images"]


def read_image(path: Path | str, case_id: str = "?", what: str = "image") -> sitk.Image:
    """Read a volume from a file or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise CaseError(case_id, f"{what} file not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise CaseError(case_id, f"{what} folder holds no DICOM series: {path}")
            if len(series) > 1:
                raise CaseError(case_id, f"{what} folder holds {len(series)} DICOM series; "
                                         f"point the manifest at one series folder: {path}")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            reader.MetaDataDictionaryArrayUpdateOff()
            reader.LoadPrivateTagsOff()
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except CaseError:
        raise
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise CaseError(case_id, f"cannot read {what} {path}: {first}") from None
    return _strip_metadata(img)


def _strip_metadata(img: sitk.Image) -> sitk.Image:
    # drop every header key (patient name, ids, dates...) so nothing identifying travels on
    for key in img.GetMetaDataKeys():
        img.EraseMetaData(key)
    return img


def geometry_mismatch(image: sitk.Image, mask: sitk.Image, tol: float = 1e-3, what: str = "mask") -> str | None:
    """Describe how ``mask`` (or another image on the same grid, named ``what``) differs from
    ``image`` in geometry, or None when they agree.

    ``tol`` is relative: spacings within ``tol`` of each other, origins within ``tol``
    of a voxel, direction cosines within ``tol``.
    """
    if image.GetDimension() != mask.GetDimension():
        return f"dimension differs: image {image.GetDimension()}D, {what} {mask.GetDimension()}D"
    if image.GetSize() != mask.GetSize():
        return f"size differs: image {image.GetSize()}, {what} {mask.GetSize()}"
    isp, msp = np.array(image.GetSpacing()), np.array(mask.GetSpacing())
    if not np.allclose(isp, msp, rtol=tol, atol=0):
        return f"spacing differs: image {_rounded(isp, 4)}, {what} {_rounded(msp, 4)}"
    io, mo = np.array(image.GetOrigin()), np.array(mask.GetOrigin())
    if np.any(np.abs(io - mo) > tol * isp):
        return f"origin differs: image {_rounded(io, 3)}, {what} {_rounded(mo, 3)}"
    idir, mdir = np.array(image.GetDirection()), np.array(mask.GetDirection())
    if np.any(np.abs(idir - mdir) > tol):
        return f"direction differs between image and {what}"
    return None


def _rounded(values, digits: int) -> tuple[float, ...]:
    """Plain floats for messages (numpy 2 would print np.float64(0.5))."""
    return tuple(round(float(v), digits) for v in values)


def resample_like(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Resample a label map onto an image's grid (always nearest neighbour)."""
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())


def mask_labels(mask: sitk.Image) -> list[int]:
    """The non-zero label values of a mask, ascending."""
    arr = sitk.GetArrayViewFromImage(mask)
    if arr.size and arr.dtype.kind in "uib" and arr.min() >= 0 and int(arr.max()) < 1 << 16:
        counts = np.bincount(arr.ravel().astype(np.intp, copy=False))  # several times faster than sorting
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    return [int(v) for v in np.unique(arr) if v != 0]


def read_case_images(case, tol: float = 1e-3, resample_mask: bool = False, notes: list[str] | None = None):
    """Read a case's image and mask, check them, return ``(image, mask)``.

    The returned mask is binary (uint8, 1 inside the ROI) for ``case.mask_label``.
    Raises :class:`CaseError` naming the case and the reason. When ``notes`` is a list,
    what was adapted (the mask resampled, one label used of several) is appended to it.
    """
    image = read_image(case.image, case.case_id, "image")
    dicom_mask = _dicom_mask(case, image, notes)
    if dicom_mask is not None:
        return image, dicom_mask
    mask = read_image(case.mask, case.case_id, "mask")
    problem = geometry_mismatch(image, mask, tol)
    if problem is not None:
        if not resample_mask:
            raise CaseError(case.case_id, f"image/mask geometry mismatch: {problem} "
                            "(set cohort.resample_mask: true to resample the mask onto the image)")
        mask = resample_like(mask, image)
        if notes is not None:
            notes.append(f"mask resampled onto the image ({problem})")
    elif (mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) != (
            image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        mask.CopyInformation(image)  # equal within tolerance: make it exact for later stages
    labels = mask_labels(mask)
    if not labels:
        raise CaseError(case.case_id, "mask is empty (no non-zero voxel)")
    if case.mask_label not in labels:
        raise CaseError(case.case_id, f"mask has no voxel with label {case.mask_label} "
                        f"(labels present: {labels})")
    if len(labels) > 1 and notes is not None:
        notes.append(f"mask holds labels {labels}; label {case.mask_label} is the ROI (mask_label)")
    binary = sitk.Cast(mask == case.mask_label, sitk.sitkUInt8)
    return image, binary


def _dicom_mask(case, image: sitk.Image, notes: list[str] | None) -> sitk.Image | None:
    """The mask of a case whose ``mask`` is an RTSTRUCT or DICOM-SEG file, on the image's
    grid (see :mod:`radiodeep.masks`); None for a label-map mask."""
    from .masks import dicom_kind, read_dicom_mask

    kind = dicom_kind(case.mask, case.case_id)
    if kind is None:
        return None
    mask = read_dicom_mask(kind, case.mask, case.image, image, case.case_id,
                           roi=getattr(case, "roi_name", None), cache_dir=getattr(case, "mask_cache", None),
                           notes=notes)
    if not mask_labels(mask):
        raise CaseError(case.case_id, f"mask is empty: ROI of {case.mask.name} covers no voxel centre of the image")
    return mask
