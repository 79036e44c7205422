"""DICOM-SEG -> binary mask on the image grid, through highdicom.

Frames are matched to the image's slices by the SOP instance UID each frame references
(never by frame order); slices the SEG leaves out (empty frames may be omitted) are
empty. Binary and label-map segmentations give the chosen segment; a fractional one is
thresholded (``value >= threshold`` after scaling to 0..1). highdicom unpacks bit-packed
frames, including frames whose pixel count is not a multiple of 8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import CaseError
from .dicomfiles import SeriesSlices, read_dataset
from .select import choose

__all__ = ["RULE_VERSION", "segment_names", "read_seg_mask"]

RULE_VERSION = "seg-by-reference-1"


def segment_names(ds) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}")
            for s in ds.get("SegmentSequence", [])}


def _frame_references(ds) -> list[str | None]:
    refs: list[str | None] = []
    for fg in ds.get("PerFrameFunctionalGroupsSequence", []):
        uid = None
        for der in fg.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                uid = str(src.ReferencedSOPInstanceUID)
        refs.append(uid)
    return refs


def _check_positions(ds, refs: list[str | None], image: sitk.Image, slices: SeriesSlices, case_id: str,
                     path: Path) -> None:
    """Each frame that gives its position must lie on the slice it references (within half a
    pixel in-plane and half a slice across): a reference alone does not prove the pixels align."""
    origin = np.array(image.GetOrigin())
    spacing = np.array(image.GetSpacing())
    to_index = np.linalg.inv(np.array(image.GetDirection()).reshape(3, 3) @ np.diag(spacing))
    for n, (fg, uid) in enumerate(zip(ds.get("PerFrameFunctionalGroupsSequence", []), refs), start=1):
        planes = fg.get("PlanePositionSequence", [])
        if not planes or "ImagePositionPatient" not in planes[0]:
            continue
        idx = to_index @ (np.asarray(planes[0].ImagePositionPatient, float) - origin)
        k = slices.uid_to_slice[uid]
        if abs(idx[0]) > 0.5 or abs(idx[1]) > 0.5 or abs(idx[2] - k) > 0.5:
            raise CaseError(case_id, f"DICOM-SEG {path}: frame {n} references slice {k} of the image but lies "
                                     f"at voxel ({idx[0]:.1f}, {idx[1]:.1f}, {idx[2]:.1f}), not on it")


def read_seg_mask(path: Path, image: sitk.Image, slices: SeriesSlices, roi: str | int | None,
                  case_id: str, notes: list[str] | None = None, threshold: float = 0.5,
                  ds=None) -> sitk.Image:
    """The segment that ``roi`` picks in the SEG at ``path``, as a uint8 mask on ``image``'s grid."""
    import highdicom as hd

    said = notes if notes is not None else []
    ds = ds if ds is not None else read_dataset(Path(path), case_id, "DICOM-SEG")
    number, note = choose(segment_names(ds), roi, case_id, "DICOM-SEG", numbers_allowed=True)
    said.append(note)
    if not slices.is_dicom:
        raise CaseError(case_id, "a DICOM-SEG mask needs the image as a DICOM series folder "
                                 "(its frames are matched to the series' instances)")
    seg_for = str(ds.get("FrameOfReferenceUID", ""))
    if seg_for and slices.frame_of_reference and seg_for != slices.frame_of_reference:
        raise CaseError(case_id, f"DICOM-SEG is in frame of reference {seg_for}, the image series in "
                                 f"{slices.frame_of_reference}: the SEG belongs to another series")
    refs = _frame_references(ds)
    if not refs or any(r is None for r in refs):
        raise CaseError(case_id, f"DICOM-SEG {path}: {sum(r is None for r in refs) or 'its'} frame(s) name no "
                                 "source image, so they cannot be matched to the series")
    unknown = sorted({r for r in refs if r not in slices.uid_to_slice})
    if unknown:
        raise CaseError(case_id, f"DICOM-SEG {path}: {sum(r in unknown for r in refs)} of {len(refs)} frames "
                                 f"reference {len(unknown)} image(s) that are not in the image series "
                                 f"({len(slices.uid_to_slice)} instances), e.g. SOP instance {unknown[0]}: "
                                 "point the manifest at the series the SEG was made on")
    rows, cols = int(ds.Rows), int(ds.Columns)
    nx, ny, nz = image.GetSize()
    if (rows, cols) != (ny, nx):
        raise CaseError(case_id, f"DICOM-SEG frames are {cols}x{rows} pixels, the image slices {nx}x{ny}")
    _check_positions(ds, refs, image, slices, case_id, path)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        wanted = sorted({r for r in refs if r is not None}, key=lambda u: slices.uid_to_slice[u])
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=wanted, segment_numbers=[number], combine_segments=False,
            rescale_fractional=True, skip_overlap_checks=True,
            ignore_spatial_locations=True)  # checked by _check_positions instead
    except CaseError:
        raise
    except Exception as err:  # noqa: BLE001 - highdicom raises ValueError, KeyError, RuntimeError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CaseError(case_id, f"cannot read the frames of DICOM-SEG {path}: {reason}") from None
    values = pixels[..., 0]
    fractional = str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    inside = values >= threshold if fractional else values > 0
    if fractional:
        said.append(f"fractional segment thresholded at {threshold:g}")
    arr = np.zeros((nz, ny, nx), np.uint8)
    for uid, frame in zip(wanted, inside):
        arr[slices.uid_to_slice[uid]] |= frame.astype(np.uint8)
    missing = nz - len(wanted)
    if missing:
        said.append(f"DICOM-SEG has no frame for {missing} of {nz} slices (empty there)")
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    return mask
