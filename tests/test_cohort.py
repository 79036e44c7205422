"""Manifest reading and per-case checks: every problem names the case and the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radiodeep.cohort import read_manifest
from radiodeep.config import parse_config
from radiodeep.imageio import read_case_images, read_image
from radiodeep.validate import load_cohort

from helpers import tiny_case, tiny_cohort_rows, write_manifest, write_volume




def config_for(tmp_path: Path, rows: list[dict], **cohort):
    write_manifest(tmp_path / "cohort.csv", rows)
    data = {"cohort": {"manifest": "cohort.csv", "positive_label": "short", **cohort},
            "features": {"deep": {"weights": None}}}
    return parse_config(data, base_dir=tmp_path)


def test_good_cohort_reads_with_relative_paths_and_covariates(tmp_path):
    rows = tiny_cohort_rows(tmp_path)
    for r in rows:
        r["age"] = "60"
    report = load_cohort(config_for(tmp_path, rows))
    assert report.ok, report.lines()
    case = report.cohort.cases[0]
    assert case.image == tmp_path.resolve() / "data" / "c0.nrrd"
    assert case.covariates == {"age": "60"}
    assert report.cohort.y().tolist() == [0, 1, 0, 1]


def test_every_bad_case_is_reported_with_its_id(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 8)
    rows[0]["image"] = "data/missing.nrrd"                                  # missing image
    (tmp_path / "data" / "broken.nrrd").write_text("this is not an image", encoding="utf-8")
    rows[1]["image"] = "data/broken.nrrd"                                   # unreadable file
    _, m = tiny_case(tmp_path / "data", "empty", empty=True)
    rows[2]["mask"] = f"data/{m.name}"                                      # empty mask
    _, m = tiny_case(tmp_path / "data", "lab2", label_value=2)
    rows[3]["mask"] = f"data/{m.name}"                                      # wrong label
    _, m = tiny_case(tmp_path / "data", "size", mask_shape=(8, 20, 24))
    rows[4]["mask"] = f"data/{m.name}"                                      # size mismatch
    _, m = tiny_case(tmp_path / "data", "spacing", mask_spacing=(1.5, 1.0, 2.0))
    rows[5]["mask"] = f"data/{m.name}"                                      # spacing mismatch
    report = load_cohort(config_for(tmp_path, rows))
    reasons = {f.case_id: f.reason for f in report.failures}
    assert set(reasons) == {"c0", "c1", "c2", "c3", "c4", "c5"}
    assert reasons["c0"].startswith("image file not found:") and "missing.nrrd" in reasons["c0"]
    assert reasons["c1"].startswith("cannot read image") and "broken.nrrd" in reasons["c1"]
    assert reasons["c2"] == "mask is empty (no non-zero voxel)"
    assert reasons["c3"] == "mask has no voxel with label 1 (labels present: [2])"
    assert "image/mask geometry mismatch: size differs: image (24, 24, 8), mask (24, 20, 8)" in reasons["c4"]
    assert "spacing differs" in reasons["c5"] and "resample_mask" in reasons["c5"]
    assert all(line.startswith("case c") for line in report.lines())


def test_mask_label_column_selects_the_label(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    _, m = tiny_case(tmp_path / "data", "lab2", label_value=2)
    rows[0]["mask"] = f"data/{m.name}"
    rows[0]["mask_label"] = "2"
    rows[1]["mask_label"] = ""
    report = load_cohort(config_for(tmp_path, rows))
    assert report.ok, report.lines()
    assert [c.mask_label for c in report.cohort.cases] == [2, 1]


def test_mask_with_several_labels_uses_the_configured_one_and_says_which(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    _, m = tiny_case(tmp_path / "data", "two", seed=0)
    arr = sitk.GetArrayFromImage(read_image(tmp_path / "data" / m.name, "two", "mask"))
    arr[0, 0, :3] = 3  # a second structure, e.g. an organ label beside the lesion
    write_volume(tmp_path / "data" / m.name, arr.astype(np.uint8))
    rows[0]["mask"] = f"data/{m.name}"
    report = load_cohort(config_for(tmp_path, rows))
    assert report.ok, report.lines()
    assert report.notes == ["case c0: mask holds labels [1, 3]; label 1 is the ROI (mask_label)"]
    _, mask = read_case_images(report.cohort.cases[0])
    assert int(sitk.GetArrayViewFromImage(mask).max()) == 1 and int(sitk.GetArrayViewFromImage(mask)[0, 0, :3].sum()) == 0


def test_resample_mask_opt_in_fixes_spacing_mismatch(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    _, m = tiny_case(tmp_path / "data", "sp", mask_spacing=(1.2, 1.0, 2.0))
    rows[0]["mask"] = f"data/{m.name}"
    cfg = config_for(tmp_path, rows, resample_mask=True)
    report = load_cohort(cfg)
    assert report.ok, report.lines()
    image, mask = read_case_images(report.cohort.cases[0], resample_mask=True)
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert int(sitk.GetArrayViewFromImage(mask).sum()) > 0


def test_geometry_within_tolerance_is_made_exact(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    _, m = tiny_case(tmp_path / "data", "sp", mask_spacing=(1.0005, 1.0, 2.0))
    rows[0]["mask"] = f"data/{m.name}"
    report = load_cohort(config_for(tmp_path, rows))
    assert report.ok, report.lines()
    image, mask = read_case_images(report.cohort.cases[0])
    assert mask.GetSpacing() == image.GetSpacing()


def test_duplicate_ids_three_labels_and_positive_label(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 4)
    rows[1]["case_id"] = "c0"
    rows[3]["label"] = "medium"
    report = load_cohort(config_for(tmp_path, rows), check_images=False)
    assert "case c0: duplicate case_id (manifest rows [2, 3])" in report.problems
    assert ("a binary task needs exactly two label values; found 3: ['long', 'medium', 'short'] "
            "('long': 2 cases (c0, c2); 'medium': 1 case (c3); 'short': 1 case (c0))" in report.problems)


def test_positive_label_must_be_one_of_the_labels(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    write_manifest(tmp_path / "m.csv", rows)
    _, problems = read_manifest(tmp_path / "m.csv", positive_label="alive")
    assert problems == ["cohort.positive_label 'alive' is not among the labels ['long', 'short']"]
    _, problems = read_manifest(tmp_path / "m.csv")
    assert problems == ["cohort.positive_label is not set; name one of the labels ['long', 'short']"]


def test_missing_manifest_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "mask"} for r in tiny_cohort_rows(tmp_path, 2)]
    report = load_cohort(config_for(tmp_path, rows))
    assert report.cohort is None
    assert "missing column(s) ['mask']" in report.problems[0]


def test_dicom_series_folder_reads(tmp_path):
    """A series folder reads in slice order (header stripping: see the single-file test below)."""
    arr = (np.arange(4 * 8 * 8).reshape(4, 8, 8) % 50).astype(np.int16)
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[z])
        sl.SetSpacing((0.8, 0.8))
        for tag, value in {"0010|0010": "DOE^JANE", "0010|0020": "MRN12345", "0008|0060": "CT",
                           "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
                           "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
                           "0020|0032": f"0\\0\\{z * 2.0}", "0020|0013": str(z + 1),
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": "2.0"}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(sl)
    img = read_image(folder, "d1")
    assert img.GetSize() == (8, 8, 4)
    assert np.array_equal(sitk.GetArrayFromImage(img), arr)
    assert img.GetSpacing() == pytest.approx((0.8, 0.8, 2.0))


def test_nifti_and_mha_read(tmp_path):
    arr = np.random.default_rng(0).normal(size=(3, 5, 6)).astype(np.float32)
    for ext in ("nii.gz", "mha"):
        p = write_volume(tmp_path / f"v.{ext}", arr)
        assert np.allclose(sitk.GetArrayFromImage(read_image(p)), arr)


def _write_dicom_file(path, arr: np.ndarray) -> None:
    """A CT slice as a single DICOM file, with recognisable identifying fields (pydicom)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "MRN12345", "19700101"
    ds.InstitutionName, ds.ReferringPhysicianName = "ST ELSEWHERE HOSPITAL", "HOUSE^GREGORY"
    ds.AccessionNumber, ds.StudyDate = "ACC998877", "20240102"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = arr.shape
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = arr.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_single_dicom_file_reads_and_nothing_identifying_leaks(tmp_path):
    """The single-file path (the one SimpleITK fills with the whole header) is stripped, and no
    header value reaches the cohort's case, the route's outputs or their provenance."""
    arr = (np.arange(16 * 16).reshape(16, 16) % 97 - 40).astype(np.int16)
    path = tmp_path / "slice.dcm"
    _write_dicom_file(path, arr)
    secrets = ("DOE", "MRN12345", "19700101", "ELSEWHERE", "HOUSE", "ACC998877", "20240102")
    raw = sitk.ReadImage(str(path))  # SimpleITK alone hands the header on
    assert raw.GetMetaData("0010|0010").startswith("DOE^JANE")
    img = read_image(path, "d1")
    assert np.array_equal(sitk.GetArrayFromImage(img).reshape(16, 16), arr)
    assert img.GetMetaDataKeys() == ()
    # through a whole cohort and the handcrafted route's outputs
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 4:12, 4:12] = 1
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(img)
    sitk.WriteImage(m, str(tmp_path / "slice_mask.nrrd"))
    rows = [{"case_id": f"d{i}", "image": "slice.dcm", "mask": "slice_mask.nrrd", "label": "ab"[i % 2]}
            for i in range(2)]
    write_manifest(tmp_path / "cohort.csv", rows)
    cfg = parse_config({"cohort": {"manifest": "cohort.csv", "positive_label": "b"},
                        "features": {"handcrafted": {"settings": {"binWidth": 25}, "mode": "2d"}},
                        "output": "out"}, base_dir=tmp_path)
    report = load_cohort(cfg)
    assert report.ok, report.lines()
    from radiodeep.features.handcrafted import extract_handcrafted
    from radiodeep.features.store import export_csv

    res = extract_handcrafted(report.cohort, cfg, progress=False)
    assert res.features.shape[0] == 2 and not res.failures
    out = export_csv(res.features, tmp_path / "out" / "features_handcrafted.csv", res.provenance)
    res.diagnostics.to_csv(tmp_path / "out" / "diagnostics.csv")
    texts = [p.read_text(encoding="utf-8") for p in (out, out.with_suffix(".provenance.json"),
                                                      tmp_path / "out" / "diagnostics.csv")]
    texts += [repr(c) for c in report.cohort.cases] + report.notes
    for secret in secrets:
        assert not any(secret in t for t in texts), secret
