"""The RTSTRUCT route on real data: three soft-tissue-sarcoma patients (CT, MR T1, PET),
against the same contours rasterised to NIfTI by another tool (MIRP); PyRadiomics
features from both masks; and the sarcoma CT cohort through ``radiodeep validate`` and
``radiodeep run --only extract`` as a user would run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from radiodeep.cli import main
from radiodeep.cohort import Case
from radiodeep.imageio import geometry_mismatch, read_case_images

STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts_rtstruct"
PATIENTS = ["STS_001", "STS_002", "STS_003"]
MODALITIES = ["CT", "MR_T1", "PET"]


@pytest.fixture(scope="module")
def sts() -> Path:
    if not (STS / "STS_001" / "CT" / "dicom" / "mask" / "RS.dcm").exists():
        pytest.skip(f"sarcoma RTSTRUCT data not found at {STS}")
    return STS


def _both(sts: Path, patient: str, modality: str):
    d = sts / patient / modality
    notes: list[str] = []
    image, ours = read_case_images(Case(patient, d / "dicom" / "image", d / "dicom" / "mask" / "RS.dcm", "x",
                                        roi_name="(?i)^gtv_mass"), notes=notes)
    theirs = sitk.ReadImage(str(d / "nifti" / "mask" / "mask.nii.gz"))
    assert geometry_mismatch(image, theirs) is None  # MIRP's mask is on the same grid
    return image, ours, theirs, notes


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("patient", PATIENTS)
def test_rtstruct_masks_agree_with_the_independent_nifti_masks(sts, patient, modality):
    """Bar: the same voxels. Both tools take a voxel when its centre lies inside the polygon
    (even-odd), so a correct rule reproduces MIRP's masks exactly (Dice 1, volume difference 0
    on all nine series; see bench/bench_masks.py). A rounding of the vertices to the pixel grid,
    or an edge-inclusive rule, shows up here as boundary voxels that differ."""
    image, ours, theirs, notes = _both(sts, patient, modality)
    a = sitk.GetArrayFromImage(ours) > 0
    b = sitk.GetArrayFromImage(theirs) > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    volume_diff = (a.sum() - b.sum()) / b.sum()
    assert b.sum() > 500
    assert dice == 1.0 and volume_diff == 0.0, (dice, volume_diff, (a & ~b).sum(), (b & ~a).sum())
    assert notes[0].startswith(f"ROI 'GTV_Mass_{modality}' taken (roi_name '(?i)^gtv_mass' matched 1 of 1")


def test_pyradiomics_features_from_both_masks_agree(sts):
    from radiomics import featureextractor

    extractor = featureextractor.RadiomicsFeatureExtractor(binWidth=25)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(firstorder=[], shape=[], glcm=["Contrast", "JointEntropy"])
    image, ours, theirs, _ = _both(sts, "STS_002", "CT")
    theirs = sitk.Cast(theirs > 0, sitk.sitkUInt8)
    theirs.CopyInformation(image)
    fa = {k: float(v) for k, v in extractor.execute(image, ours).items() if not k.startswith("diagnostics")}
    fb = {k: float(v) for k, v in extractor.execute(image, theirs).items() if not k.startswith("diagnostics")}
    assert len(fa) > 30 and fa.keys() == fb.keys()
    for k in fa:
        assert np.isclose(fa[k], fb[k], rtol=1e-9, atol=1e-9), (k, fa[k], fb[k])
    assert fa["original_shape_MeshVolume"] > 1000


def test_sarcoma_ct_cohort_validates_and_extracts(sts, tmp_path, capsys):
    """The closing scenario: three CT cases, their RTSTRUCT files, roi_name '(?i)^gtv_mass'."""
    rows = ["case_id,image,mask,label"]
    for i, p in enumerate(PATIENTS):
        rows.append(f"{p},{sts / p / 'CT/dicom/image'},{sts / p / 'CT/dicom/mask/RS.dcm'},{'ab'[i % 2]}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "setting": {"binWidth": 25, "label": 1},
        "imageType": {"Original": {}},
        "featureClass": {"firstorder": ["Mean", "Energy"], "shape": ["VoxelVolume"]}}), encoding="utf-8")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "cohort.csv", "positive_label": "b", "roi_name": "(?i)^gtv_mass"},
        "features": {"handcrafted": {"params": "params.yaml", "mode": "3d"}},
        "output": "results"}), encoding="utf-8")
    assert main(["validate", str(study)]) == 0
    out = capsys.readouterr()
    assert "cohort OK: 3 cases" in out.out
    for p in PATIENTS:
        assert f"note: case {p}: ROI 'GTV_Mass_CT' taken (roi_name '(?i)^gtv_mass' matched 1 of 1" in out.err
    assert main(["run", str(study), "--only", "extract"]) == 0
    import pandas as pd

    feats = pd.read_csv(tmp_path / "results" / "features_handcrafted.csv", index_col="case_id")
    assert list(feats.index) == PATIENTS
    # the ROI's volume as PyRadiomics sees it equals the MIRP mask's voxel count x voxel volume
    for p in PATIENTS:
        ref = sitk.ReadImage(str(sts / p / "CT/nifti/mask/mask.nii.gz"))
        vol = (sitk.GetArrayFromImage(ref) > 0).sum() * np.prod(ref.GetSpacing())
        assert np.isclose(feats.loc[p, "original_shape_VoxelVolume"], vol, rtol=1e-6)  # NIfTI: float32 spacing
    assert len(list((tmp_path / "results" / "cache" / "masks").glob("*.npz"))) == 3  # rasterised once each


def test_rtstruct_on_a_nifti_image_is_placed_by_position(sts):
    """The same RTSTRUCT on MIRP's NIfTI conversion of the image: no slice references or frame of
    reference to use, so contours are placed by position alone; the mask is the same."""
    d = sts / "STS_002" / "CT"
    notes: list[str] = []
    image, mask = read_case_images(Case("STS_002", d / "nifti/image/image.nii.gz", d / "dicom/mask/RS.dcm", "x",
                                        roi_name="GTV_Mass_CT"), notes=notes)
    _, dicom_mask, _, _ = _both(sts, "STS_002", "CT")
    assert (sitk.GetArrayFromImage(mask) == sitk.GetArrayFromImage(dicom_mask)).all()
    assert any("image is not a DICOM series" in n for n in notes)
