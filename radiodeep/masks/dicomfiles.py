"""Reading DICOM headers for the mask routes: the kind of a mask file, the image series'
slice references and frame of reference.

Only geometry and UIDs are taken from the headers; no patient, study, institution or
operator field is ever read into anything that leaves this package.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from ..errors import CaseError

__all__ = ["RTSTRUCT_SOP_CLASS", "SEG_SOP_CLASS", "SeriesSlices", "dicom_kind", "read_dataset",
           "series_slices"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
_KINDS = {RTSTRUCT_SOP_CLASS: "rtstruct", SEG_SOP_CLASS: "seg", LABEL_MAP_SEG_SOP_CLASS: "seg"}
_LABEL_MAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def dicom_kind(path: Path | str, case_id: str = "?") -> str | None:
    """``"rtstruct"`` or ``"seg"`` for a DICOM RTSTRUCT / Segmentation file, else None
    (a label-map file, a DICOM image, a folder). A ``.dcm`` file that is not readable DICOM
    raises :class:`CaseError` naming the file."""
    path = Path(path)
    if not path.is_file() or path.name.lower().endswith(_LABEL_MAP_SUFFIXES):
        return None
    with path.open("rb") as fh:
        head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        if path.suffix.lower() != ".dcm":
            return None  # not DICOM: the label-map reader decides
        raise CaseError(case_id, f"mask file is not a readable DICOM file (no DICM preamble): {path}")
    ds = read_dataset(path, case_id, "mask", header_only=True)
    sop = str(ds.get("SOPClassUID", ""))
    return _KINDS.get(sop)  # another DICOM object (a mask stored as an image): the label-map reader


_SLICE_TAGS = ["SOPClassUID", "SOPInstanceUID", "ImagePositionPatient", "FrameOfReferenceUID"]


def read_dataset(path: Path, case_id: str, what: str, header_only: bool = False,
                 tags: list[str] | None = None) -> pydicom.Dataset:
    """Read a DICOM file (only ``tags`` when given); any failure is a :class:`CaseError`
    that names the file."""
    try:
        with warnings.catch_warnings():  # pydicom's value-length warnings: noise for a reader
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, specific_tags=tags)
            ds.SOPClassUID  # noqa: B018 - a file without one is no DICOM object we can use
            if not header_only:
                for _ in ds.iterall():  # parse every element now: a truncated file fails here, not later
                    pass
    except Exception as err:  # noqa: BLE001 - pydicom fails in many ways on a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CaseError(case_id, f"cannot read {what} DICOM file {path}: {reason}") from None
    return ds


@dataclass(frozen=True)
class SeriesSlices:
    """Where each slice of an image lies: slice index by SOP instance UID, the slice's
    position along the slice normal (mm from the image origin), and the frame of reference.
    For an image that is not a DICOM series, ``uids`` is empty and ``frame_of_reference``
    None: positions are the image grid's."""

    uid_to_slice: dict[str, int]
    positions: np.ndarray  # (nz,) mm along the slice normal, from the origin
    frame_of_reference: str | None
    is_dicom: bool

    @property
    def uids_by_slice(self) -> list[str | None]:
        out: list[str | None] = [None] * len(self.positions)
        for uid, k in self.uid_to_slice.items():
            out[k] = uid
        return out


def series_slices(image_path: Path, image: sitk.Image, case_id: str) -> SeriesSlices:
    """Slice references of the image ``image`` read from ``image_path``."""
    nz = image.GetSize()[2]
    spacing_z = image.GetSpacing()[2]
    grid = np.arange(nz, dtype=float) * spacing_z
    image_path = Path(image_path)
    if not image_path.is_dir():
        return SeriesSlices({}, grid, None, False)
    origin = np.array(image.GetOrigin())
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    found: list[tuple[float, str]] = []
    frames: set[str] = set()
    for f in sorted(p for p in image_path.iterdir() if p.is_file()):
        with f.open("rb") as fh:
            head = fh.read(132)
        if head[128:132] != b"DICM" and f.suffix.lower() != ".dcm":
            continue  # not a DICOM file (a README, a thumbnail): SimpleITK ignores it too
        ds = read_dataset(f, case_id, "image", header_only=True, tags=_SLICE_TAGS)
        if "ImagePositionPatient" not in ds:
            continue
        found.append((float(np.dot(np.asarray(ds.ImagePositionPatient, float) - origin, normal)),
                      str(ds.SOPInstanceUID)))
        if "FrameOfReferenceUID" in ds:
            frames.add(str(ds.FrameOfReferenceUID))
    positions = grid.copy()
    uid_to_slice: dict[str, int] = {}
    if len(found) == nz:  # one file per slice: slice k is the k-th along the normal, gaps and all
        for k, (pos, uid) in enumerate(sorted(found)):
            uid_to_slice[uid] = k
            positions[k] = pos
    else:
        for pos, uid in found:
            k = int(round(pos / spacing_z))
            if 0 <= k < nz:
                uid_to_slice[uid] = k
                positions[k] = pos
    if len(frames) > 1:
        raise CaseError(case_id, f"image series {image_path} mixes {len(frames)} frames of reference")
    return SeriesSlices(uid_to_slice, positions, frames.pop() if frames else None, True)
