"""DICOM RTSTRUCT -> binary mask on the image grid.

The rule (``RULE_VERSION`` names it in the mask cache key):

1. Each contour point (patient coordinates, mm) is mapped to continuous voxel indices
   through the image's origin, spacing and full direction matrix, so any patient
   orientation (HFS, FFS, HFP, oblique) is handled the same way. Coordinates are rounded
   to 1e-6 pixel so that floating-point noise cannot move a boundary pixel.
2. A contour goes to the slice whose SOP instance UID it references; without a usable
   reference, to the slice whose plane is within half the slice spacing of the contour.
   Contours between slices, outside the image, or not parallel to the slices are
   reported in the case's notes (never dropped silently); an ROI left with no contour
   on the image is an invalid case.
3. A pixel is inside when its centre is inside: a ray from the centre along +column
   crosses the slice's polygon edges an odd number of times (crossing-number test, all
   polygons of the slice together, so a contour inside another cuts a hole and separate
   contours add islands). Edges count half-open in the row direction (a vertex or a
   horizontal edge through a centre row is counted once), so a centre exactly on a
   left-hand edge is inside and one on a right-hand edge is outside.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import CaseError
from .dicomfiles import SeriesSlices, read_dataset
from .select import choose

__all__ = ["RULE_VERSION", "roi_names", "rasterise_rtstruct", "fill_polygons"]

RULE_VERSION = "rtstruct-centre-evenodd-1"


def roi_names(ds) -> dict[int, str]:
    """ROI number -> name of the structures of an RTSTRUCT dataset."""
    return {int(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}")
            for r in ds.get("StructureSetROISequence", [])}


def rasterise_rtstruct(path: Path, image: sitk.Image, slices: SeriesSlices, roi: str | int | None,
                       case_id: str, notes: list[str] | None = None, ds=None) -> sitk.Image:
    """The ROI that ``roi`` picks in the RTSTRUCT at ``path``, as a uint8 mask (1 inside)
    on ``image``'s grid. ``slices`` tells which slice each referenced SOP instance is."""
    ds = ds if ds is not None else read_dataset(Path(path), case_id, "RTSTRUCT")
    try:
        return _rasterise(path, ds, image, slices, roi, case_id, notes if notes is not None else [])
    except (AttributeError, KeyError, ValueError, TypeError, IndexError, struct.error) as err:
        # a truncated or malformed file: pydicom reads what it can, the gaps show here
        raise CaseError(case_id, f"RTSTRUCT {path} is malformed or truncated ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _rasterise(path, ds, image, slices, roi, case_id, said: list[str]) -> sitk.Image:
    for needed in ("StructureSetROISequence", "ROIContourSequence"):
        if needed not in ds:
            raise CaseError(case_id, f"RTSTRUCT {path} has no {needed}: the file is truncated or not a "
                                     "structure set")
    names = roi_names(ds)
    number, note = choose(names, roi, case_id, "RTSTRUCT")
    name = names[number]
    said.append(note)
    _check_frame_of_reference(ds, number, name, slices, case_id, said)
    contours = [c for item in ds.get("ROIContourSequence", []) if int(item.ReferencedROINumber) == number
                for c in item.get("ContourSequence", [])]
    if not contours:
        raise CaseError(case_id, f"ROI {name!r} has no contour on any slice")
    per_slice, problems = _contours_by_slice(contours, image, slices)
    for p in problems:
        said.append(f"ROI {name!r}: {p}")
    if not per_slice:
        raise CaseError(case_id, f"ROI {name!r}: none of its {len(contours)} contours lies on an image slice "
                                 f"({'; '.join(problems)})")
    nx, ny, nz = image.GetSize()
    arr = np.zeros((nz, ny, nx), np.uint8)
    for k, polys in per_slice.items():
        arr[k] = fill_polygons(polys, nx, ny)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    return mask


def _check_frame_of_reference(ds, number: int, name: str, slices: SeriesSlices, case_id: str,
                              said: list[str]) -> None:
    roi_for = next((str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.StructureSetROISequence
                    if int(r.ROINumber) == number), "")
    if slices.frame_of_reference is None:
        said.append("image is not a DICOM series: frame of reference not checked, contours placed by position"
                    if not slices.is_dicom else "image series names no frame of reference: not checked")
        return
    if roi_for and roi_for != slices.frame_of_reference:
        raise CaseError(case_id, f"RTSTRUCT ROI {name!r} is in frame of reference {roi_for}, the image series "
                                 f"in {slices.frame_of_reference}: the RTSTRUCT belongs to another series")


def _contours_by_slice(contours, image: sitk.Image, slices: SeriesSlices):
    """slice index -> list of (n, 2) polygons in (column, row) pixel units; and the problems."""
    origin = np.array(image.GetOrigin())
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(direction @ np.diag(spacing))
    nx, ny, nz = image.GetSize()
    half = spacing[2] / 2
    per_slice: dict[int, list[np.ndarray]] = defaultdict(list)
    counts: dict[str, list[str]] = defaultdict(list)
    for n, c in enumerate(contours, start=1):
        kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR"))
        pts = np.asarray(c.get("ContourData", []), float)
        if pts.size % 3 or ("NumberOfContourPoints" in c and int(c.NumberOfContourPoints) * 3 != pts.size):
            counts["have a point count that does not match their data (skipped; truncated file?)"].append(str(n))
            continue
        if kind != "CLOSED_PLANAR" or pts.size < 9:
            counts[f"not a closed polygon of 3 or more points ({kind})"].append(str(n))
            continue
        idx = np.round((pts.reshape(-1, 3) - origin) @ to_index.T, 6)
        depth = idx[:, 2] * spacing[2]  # mm along the slice normal
        z = float(depth.mean())
        if depth.max() - depth.min() > half:
            counts["not parallel to the image slices (skipped)"].append(f"{n} (spans {depth.max() - depth.min():.1f} mm)")
            continue
        k = None
        ref = [str(r.ReferencedSOPInstanceUID) for r in c.get("ContourImageSequence", [])
               if "ReferencedSOPInstanceUID" in r]
        if ref and ref[0] in slices.uid_to_slice:
            k = slices.uid_to_slice[ref[0]]
            if abs(slices.positions[k] - z) > half:
                counts["lie more than half a slice from the slice they reference (placed on the referenced slice)"
                       ].append(f"{n} ({abs(slices.positions[k] - z):.1f} mm)")
        else:
            if ref and slices.uid_to_slice:
                counts["reference an image not in this series (placed by position)"].append(str(n))
            near = int(np.argmin(np.abs(slices.positions - z)))
            gap = abs(slices.positions[near] - z)
            if gap <= half + 1e-6 * spacing[2]:
                k = near
            elif slices.positions.min() - half < z < slices.positions.max() + half:
                counts["fall between slices (skipped)"].append(f"{n} ({gap:.1f} mm from the nearest slice)")
                continue
            else:
                counts["lie outside the image's slice range (skipped)"].append(f"{n} ({gap:.1f} mm beyond it)")
                continue
        xy = idx[:, :2]
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > nx - 0.5 or lo[1] > ny - 0.5:
            counts["lie outside the image in-plane (skipped)"].append(str(n))
            continue
        if lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > nx - 0.5 or hi[1] > ny - 0.5:
            counts["extend beyond the image in-plane (clipped)"].append(str(n))
        per_slice[k].append(xy)
    problems = [f"all {len(v)} contours {what}" if len(v) == len(contours) and len(v) > 1 else
                f"{len(v)} of {len(contours)} contours {what}: #{', #'.join(v[:8])}{' ...' if len(v) > 8 else ''}"
                for what, v in counts.items()]
    return dict(per_slice), problems


def fill_polygons(polys: list[np.ndarray], nx: int, ny: int) -> np.ndarray:
    """(ny, nx) uint8: pixel centres inside the polygons by the even-odd rule.

    ``polys`` holds (n, 2) vertex arrays in (column, row) pixel units; pixel (r, c) has
    its centre at (c, r). Vectorised crossing number: for each pixel-centre row, the
    x of every edge crossing it; a centre is inside when an odd number lie to its right.
    """
    x1 = np.concatenate([p[:, 0] for p in polys])
    y1 = np.concatenate([p[:, 1] for p in polys])
    x2 = np.concatenate([np.roll(p[:, 0], -1) for p in polys])
    y2 = np.concatenate([np.roll(p[:, 1], -1) for p in polys])
    out = np.zeros((ny, nx), np.uint8)
    r0, r1 = max(0, int(np.ceil(min(y1.min(), y2.min())))), min(ny - 1, int(np.floor(max(y1.max(), y2.max()))))
    if r1 < r0:
        return out
    rows = np.arange(r0, r1 + 1, dtype=float)
    crosses = (y1[:, None] <= rows) != (y2[:, None] <= rows)  # half-open: each crossing counted once
    e, r = np.nonzero(crosses)
    xi = x1[e] + (rows[r] - y1[e]) / (y2[e] - y1[e]) * (x2[e] - x1[e])
    first = np.clip(np.ceil(xi), 0, nx).astype(np.intp)  # columns c < xi are those c < ceil(xi)
    hits = np.bincount(r * (nx + 1) + first, minlength=len(rows) * (nx + 1)).reshape(len(rows), nx + 1)
    right = np.cumsum(hits[:, ::-1], axis=1)[:, ::-1]  # right[:, q] = crossings with ceil(xi) >= q
    out[r0:r1 + 1] = (right[:, 1:] & 1).astype(np.uint8)  # column c: crossings with xi > c
    return out
