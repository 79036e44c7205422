"""Tiny DICOM files for the mask tests, written with pydicom: a CT series in any patient
orientation, and an RTSTRUCT with given contours. Identifying tags carry recognisable
values (``PHI``) so that a test can grep every output for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"

PHI = {
    "PatientName": "Zyxqvist^Quentarion",
    "PatientID": "PHIID-774411",
    "PatientBirthDate": "19230417",
    "StudyDate": "19990321",
    "SeriesDate": "19990321",
    "ContentDate": "19990322",
    "InstitutionName": "Hospital Quarkwood Secret",
    "OperatorsName": "Operatorq^Wolfram",
    "ReferringPhysicianName": "Physiq^Xanthe",
    "AccessionNumber": "ACCQ99887",
}
# the values to grep for (dates also in the DICOM DA form a tool might print)
PHI_STRINGS = ["Zyxqvist", "Quentarion", "PHIID-774411", "19230417", "19990321", "19990322",
               "Quarkwood", "Operatorq", "Physiq", "ACCQ99887"]

ORIENTATIONS = {  # ImageOrientationPatient (row, column direction cosines) and slice normal sign
    "HFS": [1, 0, 0, 0, 1, 0],
    "FFS": [-1, 0, 0, 0, 1, 0],
    "HFP": [-1, 0, 0, 0, -1, 0],
}


def _file(path: Path, sop_class: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.PatientSex, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "O", "101010", "1", 1
    ds.Manufacturer = "Quarkwood Devices"
    return ds


def write_ct_series(folder: Path, *, shape=(6, 32, 32), spacing=(1.0, 1.0, 2.0), origin=(-16.0, -16.0, 0.0),
                    orientation="HFS", values: np.ndarray | None = None, frame_uid: str | None = None,
                    study_uid: str | None = None, seed: int = 0) -> dict:
    """A CT series, one file per slice; returns its uids (``sop`` by slice index) and geometry.

    ``shape`` is (slices, rows, columns); ``orientation`` one of ORIENTATIONS, or six
    direction cosines. Slice k lies at origin + k * spacing_z * normal, normal = row x column."""
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(ORIENTATIONS.get(orientation, orientation) if isinstance(orientation, str) else orientation, float)
    normal = np.cross(iop[:3], iop[3:])
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    vals = values if values is not None else rng.integers(0, 200, size=shape)
    frame_uid = frame_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    sops = []
    for k in range(nz):
        uid = generate_uid()
        sops.append(uid)
        ds = _file(folder / f"slice{k:03d}.dcm", CT_IMAGE, uid)
        ds.Modality = "CT"
        ds.PatientPosition = orientation if isinstance(orientation, str) else "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(vals[k].astype(np.uint16)).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return {"sop": sops, "frame": frame_uid, "study": study_uid, "series": series_uid, "iop": iop,
            "normal": normal, "origin": np.asarray(origin, float), "spacing": spacing, "shape": shape}


def write_rtstruct(path: Path, series: dict, rois: dict[str, list[tuple[np.ndarray, int | None]]], *,
                   frame_uid: str | None = None) -> Path:
    """An RTSTRUCT with ``rois``: name -> list of (points (n, 3) in mm, referenced slice index or None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _file(path, RTSTRUCT, generate_uid())
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series["study"], generate_uid()
    ds.StructureSetLabel = "Quarkwood plan"
    ds.StructureSetDate = PHI["StudyDate"]
    fr = frame_uid or series["frame"]
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber, r.ROIName, r.ReferencedFrameOfReferenceUID = number, name, fr
        r.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        if contours:
            rc.ContourSequence = Sequence()
        for pts, k in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            pts = np.asarray(pts, float)
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [round(float(v), 4) for v in pts.ravel()]
            if k is not None:
                ref = Dataset()
                ref.ReferencedSOPClassUID = CT_IMAGE
                ref.ReferencedSOPInstanceUID = series["sop"][k] if isinstance(k, int) else k
                c.ContourImageSequence = Sequence([ref])
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_points(series: dict, k: float, xy: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm) of in-plane offsets ``xy`` (n, 2) in mm along the row and
    column directions, on slice ``k`` (fractional k lies between slices)."""
    iop, spacing = series["iop"], series["spacing"]
    xy = np.asarray(xy, float)
    return (series["origin"] + k * spacing[2] * series["normal"]
            + xy[:, :1] * iop[:3] + xy[:, 1:2] * iop[3:])


def circle(cx: float, cy: float, r: float, n: int = 180) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def write_seg(path: Path, series_folder: Path, labels: np.ndarray, *, kind: str = "BINARY",
              n_segments: int | None = None, order: list[int] | None = None, omit_empty: bool = True) -> Path:
    """A DICOM-SEG made by highdicom on the series in ``series_folder``.

    ``labels`` is (slices, rows, columns): integer segment numbers (BINARY, LABELMAP) or
    values in 0..1 (FRACTIONAL, one segment). ``order`` gives the slices in the order the
    frames are written (to prove matching by reference, not by frame order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    files = sorted(series_folder.glob("*.dcm"))
    sources = [pydicom.dcmread(f) for f in files]
    sources.sort(key=lambda d: int(d.InstanceNumber))
    order = order if order is not None else list(range(len(sources)))
    srcs = [sources[k] for k in order]
    arr = labels[order]
    n = n_segments or (1 if kind == "FRACTIONAL" else int(labels.max()))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=f"Lesion {i}", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i in range(1, n + 1)]
    if kind == "FRACTIONAL":
        pixels = arr.astype(np.float32)
    elif kind == "LABELMAP":
        pixels = arr.astype(np.uint8)
    else:
        pixels = np.stack([arr == i for i in range(1, n + 1)], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=srcs, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="radiodeep tests", manufacturer_model_name="synthetic", software_versions="1",
        device_serial_number="1", omit_empty_frames=omit_empty, content_creator_name=PHI["OperatorsName"])
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
