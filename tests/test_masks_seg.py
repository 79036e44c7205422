"""DICOM-SEG -> mask: real dicom4qi examples (an 11-segment CT SEG, the bit-packing
phantom) and SEGs written by highdicom on synthetic series (binary with omitted empty
frames in shuffled order, fractional, label map; frames referencing another series)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import write_ct_series, write_seg
from radiodeep.cohort import Case
from radiodeep.errors import CaseError
from radiodeep.imageio import read_case_images
from radiodeep.masks import read_dicom_mask

SEG_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_seg"


@pytest.fixture(scope="module")
def seg_data() -> Path:
    if not (SEG_DATA / "data_5" / "mask" / "mask.dcm").exists():
        pytest.skip(f"DICOM-SEG examples not found at {SEG_DATA}")
    return SEG_DATA


def _read(image, mask, roi=None, notes=None):
    img, m = read_case_images(Case("c1", image, mask, "a", roi_name=roi), notes=notes)
    return img, sitk.GetArrayFromImage(m)


def test_bit_packing_phantom(seg_data):
    """23x38 frames: 874 pixels, not a multiple of 8, so frames share bytes once packed."""
    image, arr = _read(seg_data / "data_5" / "image", seg_data / "data_5" / "mask" / "mask.dcm")
    pixels = sitk.GetArrayFromImage(image)
    assert arr.shape == (3, 38, 23)
    corners = np.zeros((38, 23), bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    for k in range(3):
        assert (arr[k][corners] == 1).all()  # the four corner pixels on every slice
    assert arr[0].sum() == arr[2].sum() == 4
    # the middle slice: the round region is exactly the image's bright pixels
    assert ((arr[1] > 0) & ~corners == (pixels[1] > 0) & ~corners).all()
    assert (pixels[1] > 0).sum() > 200


def test_eleven_segment_ct_seg_by_number(seg_data):
    image_dir, seg = seg_data / "data_3" / "image", seg_data / "data_3" / "mask" / "mask.dcm"
    notes: list[str] = []
    image, one = _read(image_dir, seg, roi=1, notes=notes)
    assert "segment 1 ('Neoplasm, Primary') taken" in notes[0]
    # independent check: the frames of segment 1, placed on the slice of the instance each references
    uid_k = {}
    for f in image_dir.glob("*.dcm"):
        d = pydicom.dcmread(f, stop_before_pixels=True)
        uid_k[d.SOPInstanceUID] = image.TransformPhysicalPointToIndex([float(v) for v in d.ImagePositionPatient])[2]
    full = pydicom.dcmread(seg)
    expected = np.zeros_like(one)
    for fg, frame in zip(full.PerFrameFunctionalGroupsSequence, full.pixel_array):
        if int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == 1:
            uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            expected[uid_k[uid]] |= frame.astype(np.uint8)
    assert one.sum() > 1000 and (one == expected).all()
    # the last segment reads too, on other slices (the image read once more is the slow part: not all 11)
    last = sitk.GetArrayFromImage(read_dicom_mask("seg", seg, image_dir, image, "c1", roi="11"))
    assert last.sum() > 0 and not (last & one).any()
    with pytest.raises(CaseError, match=r"holds 11 structures .*1: 'Neoplasm, Primary', 2: 'Neoplasm, Secondary'"):
        read_dicom_mask("seg", seg, image_dir, image, "c1")
    with pytest.raises(CaseError, match="matches 10 structures"):
        read_dicom_mask("seg", seg, image_dir, image, "c1", roi="Secondary")
    with pytest.raises(CaseError, match="has no segment number 12"):
        read_dicom_mask("seg", seg, image_dir, image, "c1", roi=12)


def _labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[1, 3:9, 4:12] = 1
    lab[2, 5:10, 6:11] = 1
    lab[2, 12:15, 2:5] = 2
    lab[4, 0:3, 0:3] = 2
    lab[4, 10:12, 10:12] = rng.integers(0, 2, (2, 2)) + 1
    return lab  # slices 0 and 3 empty: their frames are omitted


@pytest.mark.parametrize("kind", ["BINARY", "LABELMAP"])
def test_synthetic_seg_frames_by_reference_with_omitted_empty_frames(tmp_path, kind):
    shape = (5, 16, 18)
    write_ct_series(tmp_path / "ct", shape=shape, orientation="FFS")
    lab = _labels(shape)
    seg = write_seg(tmp_path / "seg.dcm", tmp_path / "ct", lab, kind=kind, order=[4, 2, 0, 3, 1])
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    if kind == "BINARY":
        assert int(ds.NumberOfFrames) == 5  # slices 0 and 3 omitted; two segments on slice 2 and on slice 4
    image, arr = _read(tmp_path / "ct", seg, roi=2)
    # the series' slice k (InstanceNumber k + 1) lies where SimpleITK puts it; compare there
    files = {int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) - 1: f for f in (tmp_path / "ct").glob("*.dcm")}
    for k, f in files.items():
        pos = [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
        kk = image.TransformPhysicalPointToIndex(pos)[2]
        assert (arr[kk] == (lab[k] == 2)).all(), k
    _, seg1 = _read(tmp_path / "ct", seg, roi="Lesion 1")
    assert seg1.sum() == (lab == 1).sum()


def test_fractional_seg_is_thresholded(tmp_path):
    shape = (3, 12, 12)
    write_ct_series(tmp_path / "ct", shape=shape)
    frac = np.zeros(shape, np.float32)
    frac[1, 2:6, 2:6] = 0.9
    frac[1, 6:8, 2:6] = 0.3  # below the threshold
    frac[2, 2:4, 2:4] = 0.6
    seg = write_seg(tmp_path / "seg.dcm", tmp_path / "ct", frac, kind="FRACTIONAL")
    notes: list[str] = []
    _, arr = _read(tmp_path / "ct", seg, notes=notes)
    assert arr.sum() == 16 + 4 and arr[1, 6:8].sum() == 0
    assert any("thresholded at 0.5" in n for n in notes)


def test_seg_referencing_images_not_in_the_series(tmp_path):
    shape = (3, 12, 12)
    a = write_ct_series(tmp_path / "a", shape=shape)
    write_ct_series(tmp_path / "b", shape=shape, frame_uid=a["frame"])  # same frame, other instances
    lab = np.zeros(shape, np.uint8)
    lab[1, 2:5, 2:5] = 1
    seg = write_seg(tmp_path / "seg.dcm", tmp_path / "a", lab)
    with pytest.raises(CaseError, match=r"1 of 1 frames reference 1 image\(s\) that are not in the image series "
                                        r"\(3 instances\).*point the manifest at the series the SEG was made on"):
        _read(tmp_path / "b", seg)
    c = write_ct_series(tmp_path / "c", shape=shape)  # another frame of reference
    with pytest.raises(CaseError, match=f"in frame of reference {a['frame']}, the image series in {c['frame']}"):
        _read(tmp_path / "c", seg)
