"""The handcrafted route: PyRadiomics values, the per-case cache, failures, 2D mode, Dask.

Correctness is checked against PyRadiomics' own baseline files: on the committed
breast1 case (tests/data/pyradiomics_breast1, always) and on the five shared real
cases (../shared/data/pyradiomics_testcases, where present). The tolerance is the
baseline's own: PyRadiomics' test suite fails a feature at a relative difference of 3%.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radiodeep.cohort import Case, Cohort
from radiodeep.config import ConfigError, HandcraftedConfig, RoiConfig, parse_config
from radiodeep.errors import CaseError
from radiodeep.features import handcrafted as hc
from radiodeep.features.handcrafted import (extract_case, extract_handcrafted, handcrafted_settings,
                                            mode_params)
from radiodeep.features.store import export_csv

# pykwalify (PyRadiomics' parameter validation) loads its extension the old way
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
BREAST1 = Path(__file__).resolve().parent / "data" / "pyradiomics_breast1"
REL_TOL = 0.03  # PyRadiomics' tests/testUtils.py: a feature fails at percentDiff >= 0.03
FIVE = ("brain1", "brain2", "breast1", "lung1", "lung2")


# --------------------------------------------------------------------------- helpers
def read_baseline(folder: Path) -> dict[str, dict]:
    """{column: {"case", "settings", "image_types", "values": {pyradiomics_name: float}}}."""
    out: dict[str, dict] = {}
    for f in sorted((folder / "baseline").glob("baseline_*.csv")):
        cls = f.stem[len("baseline_"):]
        df = pd.read_csv(f, dtype=str, keep_default_na=False).set_index("featureName")
        for col in df.columns:
            c = df[col]
            entry = out.setdefault(col, {
                "case": c["diagnostics_Configuration_TestCase"],
                "settings": ast.literal_eval(c["diagnostics_Configuration_Settings"]),
                "image_types": ast.literal_eval(c["diagnostics_Configuration_EnabledImageTypes"]),
                "values": {}, "classes": []})
            entry["classes"].append(cls)
            for name, v in c.items():
                if not name.startswith("diagnostics_"):
                    full = name if name.startswith("original_") else f"original_{cls}_{name}"
                    entry["values"][full] = float(v)
    return out


def baseline_params(entry: dict, classes=None) -> dict:
    return {"setting": dict(entry["settings"]), "imageType": dict(entry["image_types"]),
            "featureClass": {c: [] for c in (classes or entry["classes"])}}


def assert_close(got: dict, expected: dict, where: str):
    assert expected, where
    bad = []
    for name, ref in expected.items():
        assert name in got, f"{where}: {name} not computed"
        v = got[name]
        rel = abs(v - ref) / abs(ref) if ref != 0 else abs(v)
        if not rel < REL_TOL:
            bad.append(f"{name}: {v} vs baseline {ref}")
    assert not bad, f"{where}: " + "; ".join(bad)


def case_of(folder: Path, name: str, case_id: str | None = None) -> Case:
    return Case(case_id or name, folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd",
                "a")


def make_config(tmp_path: Path, handcrafted: dict, **execution) -> "object":
    manifest = tmp_path / "manifest.csv"
    if not manifest.exists():
        manifest.write_text("case_id,image,mask,label\n", encoding="utf-8")
    data = {"cohort": {"manifest": str(manifest), "positive_label": "a"},
            "features": {"handcrafted": handcrafted},
            "output": str(tmp_path / "out"),
            "execution": {"progress": False, **execution}}
    return parse_config(data, base_dir=tmp_path)


def breast_cohort(tmp_path: Path, n: int = 3, copy: bool = False) -> Cohort:
    """``n`` cases b0..b(n-1) made of the committed breast1 case (copies when asked)."""
    cases = []
    for i in range(n):
        src = BREAST1
        if copy:
            src = tmp_path / f"in{i}"
            src.mkdir(exist_ok=True)
            for part in ("image", "label"):
                shutil.copy2(BREAST1 / f"breast1_{part}.nrrd", src / f"breast1_{part}.nrrd")
        cases.append(case_of(src, "breast1", f"b{i}"))
    return Cohort(cases, "a")


FAST = {"settings": {"binWidth": 25}, "params": None}
FAST_PARAMS = {"featureClass": {"firstorder": [], "glcm": ["Contrast", "JointEntropy"], "shape": []}}


@pytest.fixture
def fast_params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(json.dumps(FAST_PARAMS), encoding="utf-8")
    return p


# --------------------------------------------------------------------------- correctness
def test_committed_breast1_matches_pyradiomics_baseline():
    """Every setting variant of PyRadiomics' baseline for breast1, through radiodeep's reader."""
    base = read_baseline(BREAST1)
    checked = 0
    for col, entry in base.items():
        if entry["case"] != "breast1":  # breast1_shape2D needs a separate 2D label map
            continue
        feats, diag = extract_case(case_of(BREAST1, "breast1"), baseline_params(entry), "3d", None, None)
        assert_close(feats, entry["values"], col)
        assert not any(k.startswith("diagnostics_") for k in feats)
        assert diag["diagnostics_Versions_PyRadiomics"]
        checked += len(entry["values"])
    assert checked > 600  # 8 variants x 5-7 classes


@pytest.mark.slow
def test_shared_cases_match_pyradiomics_baseline(shared_cases, tmp_path):
    base = read_baseline(shared_cases)
    # firstorder + shape for all five cases, through the route with two worker processes
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(baseline_params(base["lung1"], ["firstorder", "shape"])), encoding="utf-8")
    cfg = make_config(tmp_path, {"params": str(params)}, n_jobs=2)
    cohort = Cohort([case_of(shared_cases, c) for c in FIVE], "a")
    res = extract_handcrafted(cohort, cfg, progress=False)
    assert not res.failures
    assert list(res.features.index) == list(FIVE)
    for c in FIVE:
        expected = {k: v for k, v in base[c]["values"].items()
                    if k.startswith(("original_firstorder_", "original_shape_"))}
        assert_close(res.features.loc[c].to_dict(), expected, c)
    # every class and every setting variant of every case's baseline (breast1_shape2D aside:
    # it needs a separate 2D label map)
    checked = set()
    for col, entry in base.items():
        if entry["case"] not in FIVE:
            continue
        feats, _ = extract_case(case_of(shared_cases, entry["case"]), baseline_params(entry), "3d", None, None)
        assert_close(feats, entry["values"], col)
        checked.add(entry["case"])
    assert checked == set(FIVE)


def test_route_table_export_and_provenance(tmp_path, fast_params):
    cfg = make_config(tmp_path, {"params": str(fast_params), "settings": {"binWidth": 10}})
    res = extract_handcrafted(breast_cohort(tmp_path, 2), cfg, progress=False)
    f = res.features
    assert res.route == "handcrafted" and f.shape == (2, 18 + 2 + 14)
    assert f.index.name == "case_id" and list(f.index) == ["b0", "b1"]
    assert "original_glcm_Contrast" in f.columns and "original_firstorder_Mean" in f.columns
    assert all(f.dtypes == np.float64) and np.isfinite(f.to_numpy()).all()
    assert not any(c.startswith("diagnostics") for c in f.columns)
    assert "diagnostics_Versions_PyRadiomics" in res.diagnostics.columns
    assert list(res.diagnostics.index) == ["b0", "b1"]
    prov = res.provenance
    assert prov["pyradiomics_version"] == "3.1.4"
    assert prov["params"]["setting"]["binWidth"] == 10  # inline merged over the file
    assert prov["params"]["featureClass"] == FAST_PARAMS["featureClass"]
    assert len(prov["settings_hash"]) == 12 and prov["mode"] == "3d"
    path = export_csv(f, tmp_path / "features_handcrafted.csv", prov)
    back = pd.read_csv(path, index_col="case_id")
    assert list(back.columns) == list(f.columns)
    np.testing.assert_allclose(back.to_numpy(), f.to_numpy(), rtol=1e-8)
    meta = json.loads(path.with_suffix(".provenance.json").read_text(encoding="utf-8"))
    assert meta["settings_hash"] == prov["settings_hash"] and meta["pyradiomics_version"] == "3.1.4"
    assert meta["params"]["setting"]["binWidth"] == 10


# --------------------------------------------------------------------------- settings
def test_params_file_is_used_as_is_with_inline_settings_merged(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("setting:\n  binWidth: 25\n  padDistance: 3\nimageType:\n  LoG: {sigma: [1.0]}\n"
                 "featureClass:\n  firstorder:\n", encoding="utf-8")
    got = handcrafted_settings(HandcraftedConfig(params="mine.yaml", settings={"binWidth": 5}), tmp_path)
    assert got == {"setting": {"binWidth": 5, "padDistance": 3}, "imageType": {"LoG": {"sigma": [1.0]}},
                   "featureClass": {"firstorder": None}}
    assert handcrafted_settings(HandcraftedConfig(), tmp_path) == {}
    assert handcrafted_settings(HandcraftedConfig(settings={"binWidth": 5}), tmp_path) == {
        "setting": {"binWidth": 5}}


@pytest.mark.parametrize("name", ["pyradiomics_ct.yaml", "pyradiomics_mr.yaml"])
def test_sample_parameter_files_are_valid(name):
    params = handcrafted_settings(HandcraftedConfig(params=name), ROOT / "sample_configs")
    assert params["setting"] and params["featureClass"]["firstorder"] is None
    hc._validate(mode_params(params, "2d", RoiConfig()), name)  # the 2D variant is valid as well


def test_invalid_parameters_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        handcrafted_settings(HandcraftedConfig(settings={"binWdith": 25}), tmp_path)
    assert "unknown key 'binWdith' in setting (did you mean 'binWidth'?)" in str(info.value)
    p = tmp_path / "p.yaml"
    p.write_text("featureClass:\n  glcmm:\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="Feature Class glcmm is not recognized"):
        handcrafted_settings(HandcraftedConfig(params=p), tmp_path)
    p.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds a mapping"):
        handcrafted_settings(HandcraftedConfig(params=p), tmp_path)


def test_mode_params_for_2d():
    params = {"setting": {"resampledPixelSpacing": [1, 1, 1], "minimumROIDimensions": 3},
              "featureClass": {"shape": [], "glcm": []}}
    p = mode_params(params, "2d", RoiConfig(plane="coronal"))
    s = p["setting"]
    assert s["force2D"] is True and s["force2Ddimension"] == 1  # coronal: array axis 1 (y)
    assert s["resampledPixelSpacing"] == [1, 0, 1]  # SimpleITK order x, y, z: y kept
    assert s["minimumROIDimensions"] == 2
    assert p["featureClass"] == {"glcm": [], "shape2D": []}
    assert mode_params(params, "2d", RoiConfig(plane="axial"))["setting"]["resampledPixelSpacing"] == [1, 1, 0]
    assert mode_params(params, "3d") == params and params["setting"]["minimumROIDimensions"] == 3
    every = mode_params({}, "2d", RoiConfig())["featureClass"]
    assert "shape" not in every and "shape2D" in every and "glrlm" in every


# --------------------------------------------------------------------------- cache
def _npz_times(cfg) -> dict[str, int]:
    root = cfg.cache_dir / "handcrafted"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("*/*.npz")}


def test_cache_second_run_computes_nothing(tmp_path, fast_params):
    cfg = make_config(tmp_path, {"params": str(fast_params)})
    cohort = breast_cohort(tmp_path, 3)
    first = extract_handcrafted(cohort, cfg, progress=False)
    assert first.provenance["n_computed"] == 3 and first.provenance["n_cached"] == 0
    times = _npz_times(cfg)
    assert len(times) == 3
    second = extract_handcrafted(cohort, cfg, progress=False)
    assert second.provenance["n_computed"] == 0 and second.provenance["n_cached"] == 3
    assert _npz_times(cfg) == times  # nothing rewritten
    pd.testing.assert_frame_equal(first.features, second.features)
    pd.testing.assert_frame_equal(first.diagnostics, second.diagnostics)

    # what does not affect the handcrafted route in 3d mode recomputes nothing
    other = make_config(tmp_path, {"params": str(fast_params)}, n_jobs=2)
    other.roi.plane = "sagittal"
    assert extract_handcrafted(cohort, other, progress=False).provenance["n_computed"] == 0


def test_settings_change_recomputes_and_keeps_the_old_results(tmp_path, fast_params):
    cohort = breast_cohort(tmp_path, 2)
    a = extract_handcrafted(cohort, make_config(tmp_path, {"params": str(fast_params)}), progress=False)
    cfg_b = make_config(tmp_path, {"params": str(fast_params), "settings": {"binWidth": 5}})
    b = extract_handcrafted(cohort, cfg_b, progress=False)
    assert b.provenance["n_computed"] == 2 and b.provenance["settings_hash"] != a.provenance["settings_hash"]
    assert b.features.loc["b0", "original_glcm_Contrast"] != a.features.loc["b0", "original_glcm_Contrast"]
    assert b.features.loc["b0", "original_firstorder_Mean"] == a.features.loc["b0", "original_firstorder_Mean"]
    # going back to the first settings finds their cache intact
    again = extract_handcrafted(cohort, make_config(tmp_path, {"params": str(fast_params)}), progress=False)
    assert again.provenance["n_computed"] == 0
    # 2D mode is a different setting; in 2D the slice choice is part of the key
    two = make_config(tmp_path, {"params": str(fast_params), "mode": "2d"})
    assert extract_handcrafted(cohort, two, progress=False).provenance["n_computed"] == 2
    two.roi.slice = "centre"
    assert extract_handcrafted(cohort, two, progress=False).provenance["n_computed"] == 2


def _params_config(tmp_path: Path, name: str, params: dict, cache: Path, **handcrafted):
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps(params), encoding="utf-8")
    cfg = make_config(tmp_path, {"params": str(p), **handcrafted})
    cfg.execution.cache_dir = cache
    return cfg


def test_an_added_filter_or_class_computes_only_what_it_adds(tmp_path):
    """Image types and classes key parts of a row: adding a filter computes that filter's
    features only, adding a class that class only; the table equals a cold run's, columns
    in the same order; what is removed stays cached for when it comes back."""
    cohort = breast_cohort(tmp_path, 2)
    first = {"setting": {"binWidth": 25}, "featureClass": {"shape": [], "firstorder": []}}
    plus_log = {**first, "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0]}}}
    plus_glcm = {**plus_log, "featureClass": {"shape": [], "firstorder": [], "glcm": ["Contrast"]}}
    inc = tmp_path / "incremental"
    a = extract_handcrafted(cohort, _params_config(tmp_path, "a", first, inc), progress=False)
    assert a.provenance["units_computed"] == ["Original/firstorder", "shape"]
    b = extract_handcrafted(cohort, _params_config(tmp_path, "b", plus_log, inc), progress=False)
    assert b.provenance["settings_hash"] == a.provenance["settings_hash"]
    assert b.provenance["n_computed"] == 2 and b.provenance["n_computed_in_part"] == 2
    assert b.provenance["units_computed"] == ["LoG/firstorder"]
    c = extract_handcrafted(cohort, _params_config(tmp_path, "c", plus_glcm, inc), progress=False)
    assert c.provenance["units_computed"] == ["LoG/glcm", "Original/glcm"]
    cold = extract_handcrafted(cohort, _params_config(tmp_path, "cold", plus_glcm, tmp_path / "cold"),
                               progress=False)
    assert cold.provenance["n_computed_in_part"] == 0
    pd.testing.assert_frame_equal(c.features, cold.features)  # values and column order
    assert list(c.features.columns[:3]) == ["original_shape_Elongation", "original_shape_Flatness",
                                            "original_shape_LeastAxisLength"]
    assert "log-sigma-2-0-mm-3D_glcm_Contrast" in c.features.columns
    # back to the first parameters: all cached, the first table again
    again = extract_handcrafted(cohort, _params_config(tmp_path, "a", first, inc), progress=False)
    assert again.provenance["n_computed"] == 0 and again.provenance["units_computed"] == []
    pd.testing.assert_frame_equal(again.features, a.features)
    # a changed filter setting recomputes that filter only
    other_sigma = {**plus_glcm, "imageType": {"Original": {}, "LoG": {"sigma": [3.0]}}}
    d = extract_handcrafted(cohort, _params_config(tmp_path, "d", other_sigma, inc), progress=False)
    assert d.provenance["units_computed"] == ["LoG/firstorder", "LoG/glcm"]
    assert "log-sigma-3-0-mm-3D_firstorder_Mean" in d.features.columns
    assert not any(col.startswith("log-sigma-1-0") for col in d.features.columns)


def test_cache_units_name_every_feature():
    params = {"imageType": {"Original": {}, "Wavelet": {}, "Square": {}, "SquareRoot": {}},
              "featureClass": {"shape": [], "firstorder": ["Mean"], "glszm": []}}
    units = hc.cache_units(params)
    assert [u.label for u in units] == ["shape", "Original/firstorder", "Original/glszm", "Wavelet/firstorder",
                                        "Wavelet/glszm", "Square/firstorder", "Square/glszm",
                                        "SquareRoot/firstorder", "SquareRoot/glszm"]
    names = ["original_shape_Sphericity", "wavelet-LLH_firstorder_Mean", "wavelet2-HHH_glszm_ZonePercentage",
             "square_firstorder_Mean", "squareroot_firstorder_Mean"]
    parts = {u.label: names_ for u in units for k, names_ in hc.split_into_units(
        dict.fromkeys(names, 1.0), units).items() if k == u.key}
    assert parts["shape"] == ["original_shape_Sphericity"]
    assert parts["Wavelet/firstorder"] == ["wavelet-LLH_firstorder_Mean"]
    assert parts["Wavelet/glszm"] == ["wavelet2-HHH_glszm_ZonePercentage"]
    assert parts["Square/firstorder"] == ["square_firstorder_Mean"]
    assert parts["SquareRoot/firstorder"] == ["squareroot_firstorder_Mean"]
    assert parts["Original/glszm"] == []
    # the parameters for some units: their image types and classes only
    sub = hc.params_for_units(params, [units[4]])
    assert sub["imageType"] == {"Wavelet": {}} and sub["featureClass"] == {"glszm": []}
    assert hc.params_for_units(params, [units[0]])["imageType"] == {"Original": {}}


def test_edited_input_recomputes_only_that_case(tmp_path, fast_params):
    cfg = make_config(tmp_path, {"params": str(fast_params)})
    cohort = breast_cohort(tmp_path, 3, copy=True)
    extract_handcrafted(cohort, cfg, progress=False)
    img = cohort.cases[1].image
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res = extract_handcrafted(cohort, cfg, progress=False)
    assert res.provenance["n_computed"] == 1 and res.provenance["n_cached"] == 2


def test_interrupted_run_resumes_where_it_stopped(tmp_path, fast_params, monkeypatch):
    cfg = make_config(tmp_path, {"params": str(fast_params)})
    cohort = breast_cohort(tmp_path, 4)
    real = hc.map_cases

    def interrupted(*args, **kwargs):
        for i, pair in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield pair

    monkeypatch.setattr(hc, "map_cases", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_handcrafted(cohort, cfg, progress=False)
    monkeypatch.setattr(hc, "map_cases", real)
    res = extract_handcrafted(cohort, cfg, progress=False)
    assert res.provenance["n_cached"] == 2 and res.provenance["n_computed"] == 2
    assert res.features.shape[0] == 4


# --------------------------------------------------------------------------- failures
def test_failed_cases_are_recorded_never_nan(tmp_path, fast_params):
    good = case_of(BREAST1, "breast1", "good")
    missing = Case("missing", tmp_path / "nope.nrrd", BREAST1 / "breast1_label.nrrd", "a")
    corrupt_path = tmp_path / "corrupt.nrrd"
    corrupt_path.write_bytes(b"NRRD0004\nthis is not an image\n")
    corrupt = Case("corrupt", corrupt_path, BREAST1 / "breast1_label.nrrd", "a")
    # a one-voxel ROI: PyRadiomics refuses it (minimumROIDimensions)
    label = sitk.ReadImage(str(BREAST1 / "breast1_label.nrrd"))
    arr = np.zeros(sitk.GetArrayViewFromImage(label).shape, np.uint8)
    arr[10, 70, 25] = 1
    tiny_mask = sitk.GetImageFromArray(arr)
    tiny_mask.CopyInformation(label)
    sitk.WriteImage(tiny_mask, str(tmp_path / "tiny.nrrd"))
    tiny = Case("tiny", BREAST1 / "breast1_image.nrrd", tmp_path / "tiny.nrrd", "a")
    cohort = Cohort([good, missing, corrupt, tiny], "a")
    res = extract_handcrafted(cohort, make_config(tmp_path, {"params": str(fast_params)}), progress=False)
    assert list(res.features.index) == ["good"]
    assert np.isfinite(res.features.to_numpy()).all()
    reasons = {f.case_id: f.reason for f in res.failures}
    assert [f.case_id for f in res.failures] == ["missing", "corrupt", "tiny"]  # cohort order
    assert all(f.stage == "handcrafted" for f in res.failures)
    assert "image file not found" in reasons["missing"]
    assert "cannot read image" in reasons["corrupt"]
    assert reasons["tiny"] == ("PyRadiomics failed: mask only contains 1 segmented voxel! "
                               "Cannot extract features for a single voxel.")
    assert res.provenance["n_failed"] == 3
    # failures are not cached: the next run tries them again (inputs may have been fixed)
    again = extract_handcrafted(cohort, make_config(tmp_path, {"params": str(fast_params)}), progress=False)
    assert again.provenance["n_cached"] == 1 and len(again.failures) == 3


class _FakeExtractor:
    def __init__(self, values):
        self.values = values

    def execute(self, image, mask, label=None):
        return {"diagnostics_Versions_PyRadiomics": "v3.1.4", **self.values}


def test_nan_or_inf_feature_is_a_case_error_naming_it(monkeypatch, tmp_path):
    fake = _FakeExtractor({"original_firstorder_Mean": np.array(1.0),
                           "original_glcm_Correlation": np.array(np.nan),
                           "original_glcm_Imc2": np.array(np.inf)})
    monkeypatch.setattr(hc, "_extractor", lambda key: fake)
    with pytest.raises(CaseError) as info:
        extract_case(case_of(BREAST1, "breast1", "x1"), {}, "3d", None, None)
    err = info.value
    assert err.case_id == "x1" and err.stage == "handcrafted"
    assert "original_glcm_Correlation=nan" in err.reason and "original_glcm_Imc2=inf" in err.reason
    # through the route: a failure, and the table holds no NaN
    cohort = Cohort([case_of(BREAST1, "breast1", "x1")], "a")
    res = extract_handcrafted(cohort, make_config(tmp_path, {"params": None}), progress=False)
    assert res.features.empty and [f.case_id for f in res.failures] == ["x1"]
    assert "original_glcm_Correlation=nan" in res.failures[0].reason


def test_a_case_missing_features_fails_instead_of_nan_columns():
    rows = {"a": {"f1": 1.0, "f2": 2.0}, "b": {"f2": 2.0, "f1": 1.0}, "c": {"f1": 1.0},
            "d": {"f1": 1.0, "f2": 2.0}}
    cols, odd = hc._reference_columns(rows)
    assert cols == ["f1", "f2"]
    assert list(odd) == ["c"] and "missing 1 (f2)" in odd["c"]


# --------------------------------------------------------------------------- modes
def test_filters_run_when_the_parameter_file_asks(tmp_path):
    params = {"imageType": {"Original": {}, "LoG": {"sigma": [1.0]}, "Wavelet": {}},
              "featureClass": {"firstorder": ["Mean"]}}
    feats, _ = extract_case(case_of(BREAST1, "breast1"), params, "3d", None, None)
    assert "original_firstorder_Mean" in feats
    assert "log-sigma-1-0-mm-3D_firstorder_Mean" in feats
    assert sum(k.startswith("wavelet-") for k in feats) == 8  # LLH ... HHH


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_2d_mode_equals_pyradiomics_on_the_chosen_slice(plane):
    """2D mode in every plane equals PyRadiomics on that slice given as a genuine 2D image,
    shape2D included (PyRadiomics 3.1.4 alone drops shape2D for coronal slices)."""
    roi = pytest.importorskip("radiodeep.roi")
    import radiomics  # noqa: F401 - imported by the route already
    from radiomics import featureextractor

    params = {"setting": {"binWidth": 25}, "featureClass": {"firstorder": [], "glcm": [], "shape": []}}
    case = case_of(BREAST1, "breast1")
    feats, diag = extract_case(case, params, "2d", RoiConfig(slice="largest", plane=plane), None)
    assert not any(k.startswith("original_shape_") for k in feats)
    assert sum(k.startswith("original_shape2D_") for k in feats) >= 9
    assert "cannot calculate 2D shape" not in diag.get(hc.WARNINGS_KEY, "")
    axis = roi.plane_axis(plane)  # array axis z, y, x
    k = int(diag["diagnostics_radiodeep_SliceIndex"])
    image = sitk.ReadImage(str(case.image))
    mask = sitk.ReadImage(str(case.mask))
    assert k == roi.largest_slice(sitk.GetArrayFromImage(mask) == 1, axis)

    # reference: PyRadiomics on that slice as a 2D image
    kept = [d for d in (0, 1, 2) if d != 2 - axis]  # SimpleITK axes x, y, z left in the plane

    def plane_image(img):
        out = sitk.GetImageFromArray(np.take(sitk.GetArrayFromImage(img), k, axis=axis))
        out.SetSpacing([img.GetSpacing()[d] for d in kept])
        return out

    ref = featureextractor.RadiomicsFeatureExtractor(
        {"setting": {"binWidth": 25}, "featureClass": {"firstorder": [], "glcm": [], "shape2D": []}}
    ).execute(plane_image(image), plane_image(mask))
    ref = {n: float(v) for n, v in ref.items() if not n.startswith("diagnostics_")}
    # TotalEnergy scales with the voxel volume: a slice of the volume keeps its thickness
    ref["original_firstorder_TotalEnergy"] *= image.GetSpacing()[2 - axis]
    assert set(ref) == set(feats)
    for name, v in ref.items():
        assert feats[name] == pytest.approx(v, rel=1e-6, abs=1e-9), name


def test_dask_backend_on_a_local_cluster(tmp_path, fast_params):
    distributed = pytest.importorskip("distributed")
    cohort = breast_cohort(tmp_path, 2)
    cohort.cases.append(Case("missing", tmp_path / "nope.nrrd", BREAST1 / "breast1_label.nrrd", "a"))
    (tmp_path / "local").mkdir()
    local = extract_handcrafted(cohort, make_config(tmp_path / "local", {"params": str(fast_params)}),
                                progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        cfg = make_config(tmp_path, {"params": str(fast_params)}, backend="dask",
                          address=cluster.scheduler_address)
        res = extract_handcrafted(cohort, cfg, progress=False)
    assert res.provenance["execution"]["backend"] == "dask"
    pd.testing.assert_frame_equal(res.features, local.features)
    assert [(f.case_id, f.stage) for f in res.failures] == [("missing", "handcrafted")]
    assert "image file not found" in res.failures[0].reason


# --------------------------------------------------------------------------- the ROI label (issue 10, item 2)
def _two_label_breast(tmp_path: Path) -> tuple[Path, Path]:
    """breast1 with its ROI as label 1 and a second region (the ROI moved 12 voxels) as label 2."""
    src = sitk.ReadImage(str(BREAST1 / "breast1_label.nrrd"))
    arr = sitk.GetArrayFromImage(src)
    two = np.zeros_like(arr)
    two[:, :, 12:] = arr[:, :, :-12]
    arr = np.where(two > 0, 2, arr).astype(arr.dtype)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(src)
    p = tmp_path / "breast1_two_labels.nrrd"
    sitk.WriteImage(mask, str(p))
    return BREAST1 / "breast1_image.nrrd", p


def test_parameter_file_label_is_honoured_and_recorded(tmp_path):
    from radiomics.featureextractor import RadiomicsFeatureExtractor
    from radiodeep.validate import load_cohort

    image, mask = _two_label_breast(tmp_path)
    params = tmp_path / "label2.yaml"
    params.write_text("setting:\n  binWidth: 25\n  label: 2\nfeatureClass:\n  firstorder:\n  glcm: [Contrast]\n",
                      encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(
        f"case_id,image,mask,label\nb0,{image},{mask},a\nb1,{image},{mask},b\n", encoding="utf-8")
    cfg = make_config(tmp_path, {"params": str(params)})
    assert cfg.roi_label() == (2, "features.handcrafted (PyRadiomics 'label')")
    report = load_cohort(cfg)
    assert report.ok, report.lines()
    res = extract_handcrafted(report.cohort, cfg, progress=False)
    expected = RadiomicsFeatureExtractor(str(params)).execute(str(image), str(mask))  # PyRadiomics, label 2
    got = res.features.loc["b0"]
    assert got["original_firstorder_Mean"] == pytest.approx(float(expected["original_firstorder_Mean"]), rel=1e-9)
    label1 = RadiomicsFeatureExtractor(str(params), label=1).execute(str(image), str(mask))
    assert abs(got["original_firstorder_Mean"] - float(label1["original_firstorder_Mean"])) > 1  # not label 1's
    assert got["original_glcm_Contrast"] == pytest.approx(float(expected["original_glcm_Contrast"]), rel=1e-9)
    assert res.provenance["roi_label"] == {"label": 2, "source": "features.handcrafted (PyRadiomics 'label')",
                                           "cases_with_own_label": {}}
    # the cohort naming the same label is fine; naming another is refused with both values
    assert make_config(tmp_path, {"params": str(params)}).cohort.mask_label is None
    data = {"cohort": {"manifest": str(tmp_path / "manifest.csv"), "positive_label": "a", "mask_label": 1},
            "features": {"handcrafted": {"params": str(params)}}}
    with pytest.raises(ConfigError, match="cohort.mask_label is 1 but the PyRadiomics parameters say label: 2"):
        parse_config(data, base_dir=tmp_path)
    data["cohort"]["mask_label"] = 2
    assert parse_config(data, base_dir=tmp_path).roi_label() == (2, "cohort.mask_label")
    # without a label anywhere, label 1 (PyRadiomics' default)
    plain = tmp_path / "plain.yaml"
    plain.write_text("setting:\n  binWidth: 25\nfeatureClass:\n  firstorder:\n", encoding="utf-8")
    assert make_config(tmp_path, {"params": str(plain)}).roi_label() == (1, "default")


def test_manifest_mask_label_column_still_chooses_per_case(tmp_path):
    from radiodeep.validate import load_cohort

    image, mask = _two_label_breast(tmp_path)
    params = tmp_path / "label2.yaml"
    params.write_text("setting:\n  label: 2\nfeatureClass:\n  firstorder: [Mean]\n", encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(
        f"case_id,image,mask,label,mask_label\nb0,{image},{mask},a,\nb1,{image},{mask},b,1\n", encoding="utf-8")
    cfg = make_config(tmp_path, {"params": str(params)})
    report = load_cohort(cfg)
    assert [c.mask_label for c in report.cohort.cases] == [2, 1]
    res = extract_handcrafted(report.cohort, cfg, progress=False)
    assert res.features.loc["b0", "original_firstorder_Mean"] != res.features.loc["b1", "original_firstorder_Mean"]
    assert res.provenance["roi_label"]["cases_with_own_label"] == {"b1": 1}


# --------------------------------------------------------------------------- parameters radiodeep cannot honour (item 6)
def test_voxel_based_parameter_file_is_refused(tmp_path):
    p = tmp_path / "voxel.yaml"
    p.write_text("setting:\n  binWidth: 25\nvoxelSetting:\n  kernelRadius: 2\n  maskedKernel: true\n"
                 "featureClass:\n  firstorder:\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="voxel-based extraction .* remove the voxelSetting section"):
        handcrafted_settings(HandcraftedConfig(params=p), tmp_path)
    cfg = make_config(tmp_path, {"params": str(p)})
    assert any("voxelSetting" in m for m in hc.config_problems(cfg))


def test_2d_parameter_file_in_3d_mode_says_use_mode_2d(tmp_path):
    p = tmp_path / "flat.yaml"
    p.write_text("setting:\n  force2D: true\n  force2Ddimension: 0\nfeatureClass:\n  glcm:\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="use features.handcrafted.mode: 2d"):
        handcrafted_settings(HandcraftedConfig(params=p, mode="3d"), tmp_path)
    assert handcrafted_settings(HandcraftedConfig(params=p, mode="2d"), tmp_path)["setting"]["force2D"] is True


def test_edited_cache_entry_is_recomputed_and_counted(tmp_path, fast_params):
    cfg = make_config(tmp_path, {"params": str(fast_params)})
    cohort = breast_cohort(tmp_path, 3)
    first = extract_handcrafted(cohort, cfg, progress=False)
    entry = cfg.cache_dir / "handcrafted" / first.provenance["settings_hash"] / "b1.npz"
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["values"] = arrays["values"] * 2  # the edit: values x 2, same fingerprint
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    again = extract_handcrafted(cohort, cfg, progress=False)
    assert (again.provenance["n_cache_damaged"], again.provenance["n_computed"]) == (1, 1)
    pd.testing.assert_frame_equal(again.features, first.features)
