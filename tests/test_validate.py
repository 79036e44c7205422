"""Inputs that would compute garbage or fail inside PyRadiomics/ITK are refused up front, in plain
words, naming the case and the file (issue 11, items 1, 3 and 11)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radiodeep.cli import main
from radiodeep.config import parse_config
from radiodeep.errors import CaseError
from radiodeep.imageio import image_info, read_image
from radiodeep.validate import load_cohort

from helpers import tiny_cohort_rows, write_manifest, write_volume

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 100, size=(16, 48, 48)).astype(np.float32)


def _corrupt_middle(path: Path, seed: int = 0, n: int = 200) -> None:
    """200 random bytes mid-stream, same size; the file is dated a second later, as a later copy is."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize("ext", ["nii.gz", "nrrd"])
def test_corrupt_compressed_file_is_refused_naming_case_and_file(tmp_path, ext):
    from radiodeep.synth import make_case

    p = tmp_path / f"img.{ext}"
    vol = make_case(0).image  # a phantom CT volume, compressed as a scanner's export would be
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(p), useCompression=True)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(p, "c7")), vol)  # sound file: read
    _corrupt_middle(p)
    sitk.ReadImage(str(p))  # SimpleITK alone reads the damaged file without a word
    with pytest.raises(CaseError) as info:
        read_image(p, "c7")
    msg = str(info.value)
    assert msg.startswith("case c7:") and str(p) in msg and "gzip check" in msg


def test_nrrd_with_detached_gzip_payload_is_verified(tmp_path):
    raw = tmp_path / "vol.raw.gz"
    import gzip

    arr = _volume()
    raw.write_bytes(gzip.compress(arr.tobytes()))
    header = tmp_path / "vol.nhdr"
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 48 48 16\nspace dimension: 3\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nendian: little\n"
                      "encoding: gzip\ndata file: vol.raw.gz\n\n", encoding="utf-8")
    assert np.array_equal(sitk.GetArrayFromImage(read_image(header, "c1")), arr)
    _corrupt_middle(raw)
    with pytest.raises(CaseError, match="gzip check"):
        read_image(header, "c1")


def test_non_finite_voxels_are_refused(tmp_path):
    arr = _volume()
    arr[3, 4, 5] = np.nan
    arr[0, 0, 0] = np.inf
    p = write_volume(tmp_path / "nan.nrrd", arr)
    with pytest.raises(CaseError, match=r"case c2: image file .*nan.nrrd holds 2 NaN or infinite voxel value"):
        read_image(p, "c2")


def test_values_outside_the_stored_type_are_refused(tmp_path):
    """A NIfTI of scaled int8 (slope 2, intercept 10) can hold [-246, 264] only: values beyond
    that cannot come from the file and are refused."""
    import struct

    from radiodeep.imageio import _stored_range, check_values

    arr = np.arange(2 * 3 * 4, dtype=np.int8).reshape(2, 3, 4)
    p = tmp_path / "scaled.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    data = bytearray(p.read_bytes())
    struct.pack_into("<h", data, 70, 256)  # datatype: int8
    struct.pack_into("<ff", data, 112, 2.0, 10.0)  # scl_slope, scl_inter
    p.write_bytes(bytes(data))
    img = read_image(p, "ok")
    assert np.allclose(sitk.GetArrayFromImage(img), arr * 2.0 + 10)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    stored = _stored_range(reader)
    assert stored[:2] == (-246.0, 264.0)
    beyond = sitk.GetImageFromArray(np.array([[[0.0, 1e31]]], np.float32))
    with pytest.raises(CaseError, match=r"case c3: image file x.nii holds values \[0, 1e\+31\] outside what its "
                                        r"stored type can hold \(NIfTI datatype 256"):
        check_values(beyond, "c3", "image", "x.nii", stored)


def test_header_only_geometry_reads_no_voxels(tmp_path):
    p = write_volume(tmp_path / "v.nrrd", _volume(), spacing=(0.5, 0.5, 2.0))
    info = image_info(p, "c")
    assert info.GetSize() == (48, 48, 16) and info.GetSpacing() == (0.5, 0.5, 2.0)
    p.write_bytes(p.read_bytes()[:400])  # header intact, voxels gone: the header alone still answers
    assert image_info(p, "c").GetSize() == (48, 48, 16)


# --------------------------------------------------------------------------- validate (item 3)


def _config(tmp_path: Path, rows, handcrafted: dict | None = None, deep: bool = False, **cohort):
    write_manifest(tmp_path / "cohort.csv", rows)
    features = {}
    if handcrafted is not None:
        features["handcrafted"] = handcrafted
    if deep or not features:
        features["deep"] = {"weights": None, "backbone": "resnet18", "layer": "penultimate"}
    data = {"cohort": {"manifest": "cohort.csv", "positive_label": "short", **cohort}, "features": features}
    return parse_config(data, base_dir=tmp_path)


def test_validate_names_what_would_fail_inside_pyradiomics(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 8)
    data = tmp_path / "data"
    # a 2D image (and mask) in a 3D study
    write_volume(data / "flat.nrrd", np.random.default_rng(1).normal(size=(24, 24)).astype(np.float32),
                 spacing=(1.0, 1.0))
    m2 = np.zeros((24, 24), np.uint8)
    m2[8:16, 8:16] = 1
    write_volume(data / "flat_mask.nrrd", m2, spacing=(1.0, 1.0))
    rows[0].update(image="data/flat.nrrd", mask="data/flat_mask.nrrd")
    # NaN voxels
    arr = np.random.default_rng(2).normal(size=(8, 24, 24)).astype(np.float32)
    arr[4, 12, 12] = np.nan
    write_volume(data / "nan.nrrd", arr)
    rows[1]["image"] = "data/nan.nrrd"
    # an RGB (vector) image
    rgb = sitk.GetImageFromArray(np.zeros((8, 24, 24, 3), np.uint8), isVector=True)
    rgb.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(rgb, str(data / "rgb.nrrd"))
    rows[2]["image"] = "data/rgb.nrrd"
    # a single-voxel mask
    one = np.zeros((8, 24, 24), np.uint8)
    one[4, 12, 12] = 1
    write_volume(data / "one.nrrd", one)
    rows[3]["mask"] = "data/one.nrrd"
    # a ROI (4 x 8 x 8 = 256 voxels) smaller than minimumROISize
    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  minimumROISize: 300\nfeatureClass:\n  firstorder:\n", encoding="utf-8")
    # a constant image: a warning, not a failure
    write_volume(data / "flat_value.nrrd", np.full((8, 24, 24), 7.0, np.float32))
    rows[5]["image"] = "data/flat_value.nrrd"
    report = load_cohort(_config(tmp_path, rows, {"params": str(params)}))
    reasons = {f.case_id: f.reason for f in report.failures}
    assert "image is 2D (a single slice) but features.handcrafted.mode is 3d: use features.handcrafted.mode: 2d" \
        in reasons["c0"]
    assert "NaN or infinite" in reasons["c1"] and "nan.nrrd" in reasons["c1"]
    assert "3 values per voxel" in reasons["c2"] and "scalar (grey)" in reasons["c2"]
    assert "spans 0 dimension(s) (1 voxel(s)" in reasons["c3"] and "minimumROIDimensions = 2" in reasons["c3"]
    for cid in ("c4", "c6", "c7"):
        assert "has 256 voxel(s), fewer than the parameter file's minimumROISize = 300" in reasons[cid]
    assert any(w.startswith("case c5: the image is constant (every voxel is 7)") for w in report.warnings)
    # the same cohort with a small enough minimumROISize: the ordinary cases pass
    params.write_text("setting:\n  minimumROISize: 200\nfeatureClass:\n  firstorder:\n", encoding="utf-8")
    report = load_cohort(_config(tmp_path, rows, {"params": str(params)}))
    assert sorted(f.case_id for f in report.failures) == ["c0", "c1", "c2", "c3"]


def test_minimum_roi_size_counts_the_resampled_voxels(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    params = tmp_path / "params.yaml"  # 256 voxels of 1 x 1 x 2 mm = 512 mm3 = 64 voxels of 2 x 2 x 2 mm
    params.write_text("setting:\n  minimumROISize: 100\n  resampledPixelSpacing: [2, 2, 2]\n"
                      "featureClass:\n  firstorder:\n", encoding="utf-8")
    report = load_cohort(_config(tmp_path, rows, {"params": str(params)}))
    assert all("about 64 after resampling" in f.reason for f in report.failures) and len(report.failures) == 2


def test_2d_mode_counts_the_chosen_slice(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    params = tmp_path / "params.yaml"  # one 8 x 8 axial slice: 64 voxels
    params.write_text("setting:\n  minimumROISize: 65\nfeatureClass:\n  firstorder:\n", encoding="utf-8")
    report = load_cohort(_config(tmp_path, rows, {"params": str(params), "mode": "2d"}))
    assert len(report.failures) == 2
    assert "the axial slice radiodeep uses in 2D mode has 64 voxel(s)" in report.failures[0].reason


def test_geometry_mismatch_of_a_sequence_uses_the_cohort_tolerance(tmp_path):
    """A 0.5% spacing difference: refused at the default tolerance, accepted at 1% by validate
    and by the deep route alike (the deep route ignored the tolerance for sequences)."""
    from radiodeep.features.deep import extract_deep

    rows = tiny_cohort_rows(tmp_path, 4)
    for r in rows:
        cid = r["case_id"]
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / r["image"])))
        for k, name in enumerate(("t2", "flair")):
            write_volume(tmp_path / "data" / f"{cid}_{name}.nrrd", arr + k, spacing=(1.005, 1.0, 2.0))
            r[name] = f"data/{cid}_{name}.nrrd"
        r["t1"] = r["image"]
    strict = _config(tmp_path, rows, deep=True, sequences=["t1", "t2", "flair"])
    strict.features.deep.channels = "sequences"
    strict.roi.intensity.modality = "MR"
    report = load_cohort(strict)
    assert len(report.failures) == 4 and "spacing differs" in report.failures[0].reason
    loose = _config(tmp_path, rows, deep=True, sequences=["t1", "t2", "flair"], geometry_tolerance=0.01)
    loose.features.deep.channels = "sequences"
    loose.roi.intensity.modality = "MR"
    loose.roi.size = 64
    loose.execution.cache_dir = tmp_path / "cache"
    report = load_cohort(loose)
    assert report.ok, report.lines()
    res = extract_deep(report.cohort, loose, progress=False)
    assert res.failures == [] and res.features.shape[0] == 4
    assert res.provenance["geometry"] == {"tolerance": 0.01, "resample_mask": False}
    strict.roi.size = 64
    strict.execution.cache_dir = tmp_path / "cache"
    from radiodeep.features.deep import deep_settings

    assert deep_settings(strict) != deep_settings(loose)  # the tolerance is in the cache key


# --------------------------------------------------------------------------- messages (item 11)
def test_4d_nrrd_read_as_a_vector_image_is_named(tmp_path):
    rows = tiny_cohort_rows(tmp_path, 2)
    four = tmp_path / "data" / "four.nrrd"
    arr = np.zeros((5, 8, 24, 24), np.float32)  # 5 time points of the 8 x 24 x 24 grid
    (tmp_path / "data" / "four.raw").write_bytes(arr.tobytes())
    four.write_text("NRRD0004\ntype: float\ndimension: 4\nsizes: 5 24 24 8\nkinds: list domain domain domain\n"
                    "space dimension: 3\nspace directions: none (1,0,0) (0,1,0) (0,0,2)\nspace origin: (0,0,0)\n"
                    "endian: little\nencoding: raw\ndata file: four.raw\n\n", encoding="utf-8")
    assert sitk.ReadImage(str(four)).GetNumberOfComponentsPerPixel() == 5
    rows[0]["image"] = "data/four.nrrd"
    report = load_cohort(_config(tmp_path, rows))
    reason = report.failures[0].reason
    assert "size differs" not in reason
    assert "5 values per voxel" in reason and "4D series" in reason
    # the same series stored as a 4D scalar volume
    four.write_text("NRRD0004\ntype: float\ndimension: 4\nsizes: 24 24 8 5\nencoding: raw\nendian: little\n"
                    "data file: four.raw\n\n", encoding="utf-8")
    report = load_cohort(_config(tmp_path, rows))
    assert "image 4D (a 4D series: several volumes" in report.failures[0].reason


def test_header_only_and_semicolon_manifests_say_what_is_wrong(tmp_path):
    cfg = _config(tmp_path, tiny_cohort_rows(tmp_path, 2))
    (tmp_path / "cohort.csv").write_text("case_id,image,mask,label\n", encoding="utf-8")
    report = load_cohort(cfg)
    assert report.problems == [f"manifest {tmp_path.resolve() / 'cohort.csv'} has a header but no rows: "
                               "add one row per case"]
    (tmp_path / "cohort.csv").write_text("case_id;image;mask;label\nc0;a.nrrd;b.nrrd;short\n", encoding="utf-8")
    report = load_cohort(cfg)
    assert "';' separators: the manifest must be comma-separated" in report.problems[0]


def test_validate_lists_every_class_of_problem_at_once(tmp_path, capsys, monkeypatch):
    """Manifest (a bad case), parameter file and weights, in one pass."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    rows = tiny_cohort_rows(tmp_path, 4)
    rows[0]["image"] = "data/missing.nrrd"
    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  binWdith: 25\n", encoding="utf-8")
    write_manifest(tmp_path / "cohort.csv", rows)
    study = tmp_path / "study.yaml"
    study.write_text("cohort: {manifest: cohort.csv, positive_label: short}\n"
                     "features:\n  handcrafted: {params: params.yaml}\n"
                     "  deep: {backbone: alexnet, weights: IMAGENET1K_V1}\n", encoding="utf-8")
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'binWdith'" in err
    assert "ImageNet weights" in err and "not on this machine" in err
    assert "case c0: image file not found" in err


def test_validate_lists_the_rest_when_a_file_is_missing(tmp_path, capsys, monkeypatch):
    """A missing parameter file no longer hides the missing weights and the bad cases."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    rows = tiny_cohort_rows(tmp_path, 4)
    rows[1]["mask"] = "data/gone.nrrd"
    write_manifest(tmp_path / "cohort.csv", rows)
    study = tmp_path / "study.yaml"
    study.write_text("cohort: {manifest: cohort.csv, positive_label: short}\n"
                     "features:\n  handcrafted: {params: missing.yaml}\n"
                     "  deep: {backbone: alexnet, weights: IMAGENET1K_V1}\n", encoding="utf-8")
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("missing.yaml") == 1 and "file not found" in err
    assert "ImageNet weights" in err and "case c1: mask file not found" in err
