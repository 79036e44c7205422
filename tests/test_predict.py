"""Final models and ``radiodeep predict``: a study's saved models score a second, unlabelled
phantom cohort with the numbers the same pipeline gives in Python; label-free extraction;
tampered or foreign model files are refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from radiodeep.cli import main
from radiodeep.config import load_config
from radiodeep.errors import ExitCode
from radiodeep.experiment import build_pipeline
from radiodeep.features.store import read_features
from radiodeep.final_model import ModelFileError, load_model
from radiodeep.pipeline import RunError, run
from radiodeep.synth import make_cohort

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "sample_configs" / "pyradiomics_ct.yaml")

EXPERIMENTS = [
    {"name": "hc-su5-nb", "features": ["handcrafted"], "select": {"method": "su", "k": 5},
     "classifier": "naive_bayes", "final": True},
    {"name": "hc-relieff4-svm", "features": ["handcrafted"], "select": {"method": "relieff", "k": 4},
     "classifier": "svm_rbf", "final": True},
    {"name": "hc-lr", "features": ["handcrafted"], "classifier": "logistic_regression"},
]


def write_study(folder: Path, manifest: str, experiments=None, output="results") -> Path:
    cfg = {
        "name": "predict test",
        "cohort": {"manifest": manifest, "positive_label": "short"},
        "features": {"handcrafted": {"mode": "3d", "settings": {"binWidth": 25}, "params": PARAMS}},
        "experiments": EXPERIMENTS if experiments is None else experiments,
        "evaluation": {"scheme": "loo", "seed": 0},
        "output": output,
        "execution": {"n_jobs": 1, "progress": False},
    }
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def rewrite_manifest(path: Path, *, prefix: str, drop_label: bool = True, broken: bool = False) -> Path:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    for r in rows:
        r["case_id"] = prefix + r["case_id"]
        if drop_label:
            del r["label"]
    if broken:  # a case whose image is missing: listed, the others scored
        rows.append({**rows[0], "case_id": prefix + "broken", "image": "images/none.nrrd"})
    out = path.with_name(f"manifest_{prefix}{'broken' if broken else ''}.csv")
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    make_cohort(tmp / "cohort", n_cases=12, seed=5)
    cfg = load_config(write_study(tmp, "cohort/manifest.csv"))
    result = run(cfg)
    new = make_cohort(tmp / "new", n_cases=5, seed=11)
    return tmp, cfg, result, new


def test_final_models_are_saved_with_a_sidecar(study):
    tmp, cfg, result, _ = study
    assert not result.experiment_errors
    models = cfg.output_dir / "models"
    # final: true marks two experiments: only those are saved
    assert sorted(p.name for p in models.glob("*.joblib")) == ["hc-relieff4-svm.joblib", "hc-su5-nb.joblib"]
    meta = json.loads((models / "hc-su5-nb.json").read_text(encoding="utf-8"))
    assert set(meta["versions"]) == {"radiodeep", "scikit-learn", "numpy"}
    assert meta["threshold"] == 0.5 and meta["n_cases"] == 12
    assert meta["routes"]["handcrafted"]["settings_key"] == json.loads(
        (cfg.output_dir / "run_record.json").read_text(encoding="utf-8"))["routes"]["handcrafted"]["settings_key"]
    assert json.loads((models / "hc-relieff4-svm.json").read_text(encoding="utf-8"))["threshold"] == 0.0
    record = json.loads((cfg.output_dir / "run_record.json").read_text(encoding="utf-8"))
    assert [m["experiment"] for m in record["models"]] == ["hc-su5-nb", "hc-relieff4-svm"]


def test_predict_gives_the_numbers_of_the_same_pipeline_fitted_in_python(study):
    tmp, cfg, _, new = study
    unlabelled = rewrite_manifest(new, prefix="n", broken=True)
    out = tmp / "scored"
    code = main(["predict", str(cfg.output_dir), str(unlabelled), "--out", str(out), "--no-progress"])
    assert code == ExitCode.CASES_FAILED  # the broken case
    pred = pd.read_csv(out / "predictions_new.csv", dtype={"case_id": str})
    fails = pd.read_csv(out / "failures_new.csv", dtype={"case_id": str})
    assert fails["case_id"].tolist() == ["nbroken"] and "none.nrrd" in fails["reason"][0]
    assert sorted(pred["experiment"].unique()) == ["hc-relieff4-svm", "hc-su5-nb"]
    assert sorted(pred.loc[pred.experiment == "hc-su5-nb", "case_id"]) == [f"nct{i:03d}" for i in range(5)]
    page = (out / "predictions_new.html").read_text(encoding="utf-8")
    assert "nbroken" in page and "nct004" in page

    # the same in Python: features of the new cohort extracted independently (own output and
    # cache, label-free --only extract), the pipeline fitted on the study's exported features
    fresh = load_config(write_study(tmp, str(rewrite_manifest(new, prefix="n")), output="fresh"))
    run(fresh, only="extract")
    X_new = read_features(fresh.output_dir / "features_handcrafted.csv")
    X = read_features(cfg.output_dir / "features_handcrafted.csv")
    labels = pd.read_csv(tmp / "cohort" / "manifest.csv", dtype=str).set_index("case_id")["label"]
    y = (labels.loc[X.index] == "short").astype(int).to_numpy()
    for exp in cfg.experiments[:2]:
        pipe = build_pipeline(exp, {"handcrafted": list(X.columns)}, cfg.evaluation.seed).fit(X, y)
        if exp.classifier.name == "svm_rbf":
            expected, cut = pipe.decision_function(X_new), 0.0
        else:
            expected, cut = pipe.predict_proba(X_new)[:, 1], 0.5
        got = pred[pred.experiment == exp.name].set_index("case_id").loc[X_new.index]
        np.testing.assert_array_equal(got["score"].to_numpy(), expected)
        assert (got["threshold"] == cut).all()
        want = np.where(expected > cut, "short", "long")
        assert got["predicted_label"].tolist() == want.tolist()


def test_label_free_extraction_with_one_label_value(study):
    tmp, cfg, _, new = study
    one = rewrite_manifest(new, prefix="o", drop_label=False)
    df = pd.read_csv(one, dtype=str)
    df["label"] = "short"
    df.to_csv(one, index=False)
    c = load_config(write_study(tmp, one.name if one.parent == tmp else str(one), output="onelabel"))
    res = run(c, only="extract")
    assert res.features["handcrafted"].shape[0] == 5
    with pytest.raises(RunError, match="two label values"):  # evaluating still needs two classes
        run(c)


def test_a_tampered_model_file_is_refused(study, tmp_path):
    _, cfg, _, new = study
    models = tmp_path / "models"
    shutil.copytree(cfg.output_dir / "models", models)
    f = models / "hc-su5-nb.joblib"
    load_model(f)  # intact: loads
    f.write_bytes(f.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="hc-su5-nb.joblib refused: its SHA-256"):
        load_model(f)
    code = main(["predict", str(f), str(new), "--out", str(tmp_path / "p"), "--no-progress"])
    assert code == ExitCode.STOPPED
    assert not (tmp_path / "p" / "predictions_new.csv").exists()


def test_a_model_from_other_versions_is_refused_naming_them(study, tmp_path):
    _, cfg, _, _ = study
    models = tmp_path / "models"
    shutil.copytree(cfg.output_dir / "models", models)
    side = models / "hc-su5-nb.json"
    meta = json.loads(side.read_text(encoding="utf-8"))
    meta["versions"]["scikit-learn"] = "0.24.2"
    side.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"scikit-learn 0.24.2 \(model\) vs"):
        load_model(models / "hc-su5-nb.joblib")
    (models / "hc-relieff4-svm.json").unlink()
    with pytest.raises(ModelFileError, match="sidecar hc-relieff4-svm.json is missing"):
        load_model(models / "hc-relieff4-svm.joblib")


# --------------------------------------------------------------------------- clinical route
def add_covariates(manifest: Path, stages: list[str], out_name: str, ages=None) -> Path:
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df["stage"] = [stages[i % len(stages)] for i in range(len(df))]
    if ages is not None:
        df["age"] = ages
    path = manifest.with_name(out_name)
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def clinical_study(study):
    tmp, _, _, new = study
    add_covariates(tmp / "cohort" / "manifest.csv", ["I", "II", "III"], "manifest_clinical.csv")
    exps = [
        {"name": "clin-hc-su2-lr", "features": ["clinical", "handcrafted"],
         "select": {"method": "su", "k_per_route": 2}, "classifier": "logistic_regression"},
        {"name": "clin-nb", "features": ["clinical"], "classifier": "naive_bayes"},
    ]
    path = write_study(tmp, "cohort/manifest_clinical.csv", experiments=exps, output="clinical")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"]["covariates"] = ["age", "stage"]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cfg = load_config(path)
    return tmp, cfg, run(cfg), new


def test_clinical_covariates_with_handcrafted_features(clinical_study):
    tmp, cfg, result, _ = clinical_study
    assert not result.experiment_errors, result.experiment_errors
    clin = read_features(cfg.output_dir / "features_clinical.csv")
    assert list(clin.columns) == ["clinical_age", "clinical_stage_I", "clinical_stage_II", "clinical_stage_III"]
    manifest = pd.read_csv(tmp / "cohort" / "manifest_clinical.csv", dtype=str).set_index("case_id")
    np.testing.assert_array_equal(clin["clinical_age"], manifest.loc[clin.index, "age"].astype(float))
    assert (clin.filter(like="clinical_stage_").sum(axis=1) == 1).all()
    assert set(result.metrics["experiment"]) == {"clin-hc-su2-lr", "clin-nb"}
    sel = result.selection[result.selection.experiment == "clin-hc-su2-lr"]
    assert set(sel["route"]) == {"clinical", "handcrafted"}  # two of each route in every fold
    meta = json.loads((cfg.output_dir / "models" / "clin-nb.json").read_text(encoding="utf-8"))
    assert meta["routes"]["clinical"]["encoding"]["stage"] == {"kind": "categorical",
                                                                "categories": ["I", "II", "III"]}


def test_predict_with_covariates_unseen_category_warns_missing_value_fails(clinical_study):
    tmp, cfg, _, new = clinical_study
    ages = ["70", "", "55", "61", "80"]  # the second case lacks its age
    labelled = add_covariates(new, ["II", "IV", "I"], "manifest_newclin.csv", ages=ages)
    unlabelled = rewrite_manifest(labelled, prefix="c")
    res = __import__("radiodeep.predict", fromlist=["predict"]).predict(
        cfg.output_dir, unlabelled, tmp / "scored_clin", experiment="clin-nb")
    assert res.failures["case_id"].tolist() == ["cct001"]
    assert "'age' is missing" in res.failures["reason"][0]
    # stage IV (cases 1 and 4): case 1 failed on its age; case 4 is scored with a warning
    assert len(res.warnings) == 1 and "cct004" in res.warnings[0] and "'IV'" in res.warnings[0]
    X = res.features["clinical"]
    assert X.loc["cct004", ["clinical_stage_I", "clinical_stage_II", "clinical_stage_III"]].sum() == 0
    model = load_model(cfg.output_dir / "models" / "clin-nb.joblib")
    expected = model.pipeline.predict_proba(X.loc[["cct000", "cct002", "cct003", "cct004"]])[:, 1]
    np.testing.assert_array_equal(res.predictions.set_index("case_id")["score"].to_numpy(), expected)


def test_a_covariate_not_in_the_manifest_is_named_before_any_work(study):
    tmp, _, _, _ = study
    path = write_study(tmp, "cohort/manifest.csv", experiments=[
        {"name": "c", "features": ["clinical"], "classifier": "naive_bayes"}], output="badcov")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"]["covariates"] = {"age": "numeric", "weight": "numeric"}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(RunError, match="'weight' is not a column of manifest.csv"):
        run(load_config(path))
    assert main(["validate", str(path), "--no-images"]) == 1


# --------------------------------------------------------------------------- PyRadiomics batch files
def pyradiomics_batch(manifest: Path, name: str, outcome: bool = True) -> Path:
    df = pd.read_csv(manifest, dtype=str)
    batch = pd.DataFrame({"ID": df["case_id"], "Image": df["image"], "Mask": df["mask"], "Label": "1"})
    if outcome:
        batch["Outcome"] = df["label"]
    path = manifest.with_name(name)
    batch.to_csv(path, index=False)
    return path


def test_a_pyradiomics_batch_file_is_a_manifest(study, tmp_path):
    from radiodeep.cohort import read_manifest

    tmp, cfg, _, new = study
    batch = pyradiomics_batch(tmp / "cohort" / "manifest.csv", "batch.csv")
    cohort, problems = read_manifest(batch, positive_label="short", columns={"label": "Outcome"})
    assert not problems
    assert cohort.ids[0] == "ct000" and cohort.cases[0].image.name == "ct000.nrrd"
    assert {c.mask_label for c in cohort.cases} == {1} and "Label" not in cohort.cases[0].covariates
    assert sorted(set(cohort.labels)) == ["long", "short"]
    # without an outcome column: the error says that PyRadiomics' Label is the mask label
    with pytest.raises(ValueError, match="'Label' column is the ROI's label value in the MASK"):
        read_manifest(batch, positive_label="short")
    with pytest.raises(ValueError, match="cannot be PyRadiomics' 'Label'"):
        read_manifest(batch, positive_label="short", columns={"label": "Label"})
    # a study on it (cohort.columns names the outcome) gives the numbers of the plain manifest
    path = write_study(tmp, "cohort/batch.csv", experiments=EXPERIMENTS[:1], output="batchrun")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"]["columns"] = {"label": "Outcome"}
    data["execution"]["cache_dir"] = "results/cache"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    res = run(load_config(path))
    a = res.predictions.set_index("case_id")["score"]
    b = pd.read_csv(cfg.output_dir / "predictions.csv", dtype={"case_id": str})
    b = b[b.experiment == "hc-su5-nb"].set_index("case_id")["score"]
    np.testing.assert_array_equal(a.loc[b.index], b)
    # new cases as a PyRadiomics batch file without any outcome: scored
    scored = __import__("radiodeep.predict", fromlist=["predict"]).predict(
        tmp / "batchrun", pyradiomics_batch(new, "batch_new.csv", outcome=False),
        tmp_path / "p", experiment="hc-su5-nb")
    assert len(scored.predictions) == 5 and scored.failures.empty


# --------------------------------------------------------------------------- paper-ready report
def test_brier_and_calibration_points_by_hand():
    from radiodeep.paper import brier_score, calibration_points

    assert brier_score([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
    pts = calibration_points([0, 0, 1, 1, 1], [0.1, 0.15, 0.5, 0.9, 0.95], bins=5)
    assert pts["n"].tolist() == [2, 1, 2]
    np.testing.assert_allclose(pts["predicted"], [0.125, 0.5, 0.925])
    np.testing.assert_allclose(pts["observed"], [0.0, 1.0, 1.0])


def test_report_has_cohort_table_calibration_methods_and_tripod(study):
    import struct

    tmp, cfg, _, _ = study
    out = cfg.output_dir
    metrics = pd.read_csv(out / "metrics.csv").set_index("experiment")
    pred = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    nb = pred[pred.experiment == "hc-su5-nb"]
    assert metrics.loc["hc-su5-nb", "brier"] == pytest.approx(np.mean((nb["score"] - nb["y_true"]) ** 2))
    assert np.isnan(metrics.loc["hc-relieff4-svm", "brier"])  # a decision function is no probability
    png = (out / "calibration.png").read_bytes()
    i = png.index(b"pHYs")
    assert struct.unpack(">II", png[i + 4:i + 12]) == (11811, 11811)  # 300 dpi
    for svg in ("calibration.svg", "roc_curves.svg"):  # figures for the paper, beside the report
        assert (out / svg).read_text(encoding="utf-8").lstrip().startswith("<?xml")
    record = json.loads((out / "run_record.json").read_text(encoding="utf-8"))
    assert record["cohort"]["classes"] == {"long": 6, "short": 6}
    assert [c["name"] for c in record["cohort"]["covariates"]] == ["age"]
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in ("Methods paragraph", "TRIPOD checklist", "symmetric uncertainty ranking keeping the top 5",
                 "leave-one-out cross-validation", "PyRadiomics 3.1.4", "12 eligible cases",
                 "Brier score", "age, median (IQR)"):
        assert text in html, text


def test_cohort_table_summarises_clinical_covariates_per_class(clinical_study):
    _, cfg, _, _ = clinical_study
    record = json.loads((cfg.output_dir / "run_record.json").read_text(encoding="utf-8"))
    stage = next(c for c in record["cohort"]["covariates"] if c["name"] == "stage")
    assert stage["kind"] == "categorical" and stage["overall"] == "I: 4, II: 4, III: 4"
    html = (cfg.output_dir / "report.html").read_text(encoding="utf-8")
    assert "Clinical covariates age (numeric), stage (categorical)" in html


# --------------------------------------------------------------------------- learned (image) experiments
TINY_CNN = {"name": "cnn_finetune", "backbone": "resnet18", "weights": None, "epochs": 1, "lr": 1e-3,
            "batch_size": 2, "threads": 1, "device": "cpu"}
TINY_ENSEMBLE = {"name": "cnn_ensemble", "architectures": ["usf1"], "seeds": [0, 1], "epochs": 1, "batch_size": 2,
                 "threads": 1, "device": "cpu"}


def write_image_study(folder: Path, manifest: str, output: str) -> Path:
    cfg = {
        "name": "image predict test",
        "cohort": {"manifest": manifest, "positive_label": "short"},
        "roi": {"slice": "largest", "crop": "exact", "margin_px": 2, "size": 32, "intensity": {"modality": "MR"}},
        "features": {"image": {"channels": "grey3"}},
        "experiments": [{"name": "ft", "features": ["image"], "classifier": TINY_CNN},
                        {"name": "ens", "features": ["image"], "classifier": TINY_ENSEMBLE}],
        "evaluation": {"scheme": "repeated_kfold", "folds": 2, "repeats": 1, "seed": 0},
        "output": output,
        "execution": {"n_jobs": 1, "progress": False},
    }
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def test_learned_final_model_scores_new_cases_as_in_python(tmp_path):
    """A fine-tuned CNN and a from-scratch ensemble get final models (fitted on every case, hashed, torch and
    skorch versions recorded); predict scores an unlabelled cohort through the image route with
    the numbers the saved estimator gives in Python on independently extracted ROI tensors, and
    writes no audit beside the study."""
    from radiodeep.learned.route import read_tensors

    make_cohort(tmp_path / "cohort", n_cases=6, seed=4, modality="mr")
    cfg = load_config(write_image_study(tmp_path, "cohort/manifest.csv", "results"))
    result = run(cfg)
    assert not result.experiment_errors, result.experiment_errors
    for name in ("ft", "ens"):
        meta = json.loads((cfg.output_dir / "models" / f"{name}.json").read_text(encoding="utf-8"))
        assert {"torch", "skorch"} <= set(meta["versions"]) and meta["n_cases"] == 6 and meta["threshold"] == 0.5
    written = sorted(str(p) for d in ("audit", "ensembles") for p in (cfg.output_dir / d).rglob("*"))
    assert any("audit" in p for p in written) and any("ensembles" in p for p in written)

    new = make_cohort(tmp_path / "new", n_cases=3, seed=11, modality="mr")
    unlabelled = rewrite_manifest(new, prefix="n")
    out = tmp_path / "scored"
    assert main(["predict", str(cfg.output_dir), str(unlabelled), "--out", str(out), "--no-progress"]) == 0
    pred = pd.read_csv(out / "predictions_new.csv", dtype={"case_id": str}).set_index("case_id")
    assert len(pred) == 6 and sorted(pred["experiment"].unique()) == ["ens", "ft"]
    # scoring new cases writes no audit or ensemble record beside the study
    assert sorted(str(p) for d in ("audit", "ensembles") for p in (cfg.output_dir / d).rglob("*")) == written

    fresh = load_config(write_image_study(tmp_path, str(unlabelled), "fresh"))
    run(fresh, only="extract")
    X_new = read_tensors(fresh.output_dir / "features_image.npz")
    for name in ("ft", "ens"):
        model = load_model(cfg.output_dir / "models" / f"{name}.joblib")
        expected = model.pipeline.predict_proba(X_new)[:, 1]
        got = pred[pred["experiment"] == name].loc[X_new.index]
        np.testing.assert_array_equal(got["score"].to_numpy(), expected)
        assert got["predicted_label"].tolist() == np.where(expected > 0.5, "short", "long").tolist()
        assert (got["threshold"] == 0.5).all()
        # a saved model holds weights and hashes, never the training images its audit kept
        kept = [o for o in _estimators(model.pipeline) if getattr(o, "_train_x", None) is not None]
        assert not kept and any(hasattr(o, "train_hashes_") for o in _estimators(model.pipeline))


def _estimators(obj, seen=None):
    from sklearn.base import BaseEstimator

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = [obj] if isinstance(obj, BaseEstimator) else []
    children = (list(vars(obj).values()) if isinstance(obj, BaseEstimator) else
                list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) else [])
    for child in children:
        found += _estimators(child, seen)
    return found


# --------------------------------------------------------------------------- clinical: in-fold imputation
def test_clinical_missing_values_are_imputed_inside_each_fold(study):
    """features.clinical.missing: impute: the NaN reaches the pipeline, whose first step fills a
    held-out case's age with its training fold's median (not the cohort's) and its stage with
    the fold's most frequent one; the evaluation's score is that pipeline's."""
    from radiodeep.experiment import build_pipeline
    from radiodeep.features.clinical import fold_imputer

    tmp, _, _, _ = study
    ages = ["31", "44", "", "52", "67", "70", "38", "81", "59", "90", "25", "63"]
    stages = ["I", "II", "", "III", "II", "I", "III", "II", "I", "II", "III", "I"]
    df = pd.read_csv(tmp / "cohort" / "manifest.csv", dtype=str, keep_default_na=False)
    df["age"], df["stage"] = ages, stages
    df.to_csv(tmp / "cohort" / "manifest_impute.csv", index=False)
    held = df["case_id"][2]
    data = {"name": "impute", "cohort": {"manifest": "cohort/manifest_impute.csv", "positive_label": "short",
                                         "covariates": ["age", "stage"]},
            "features": {"clinical": {"missing": "impute"}},
            "experiments": [{"name": "clin-lr", "features": ["clinical"], "classifier": "logistic_regression"}],
            "evaluation": {"scheme": "repeated_kfold", "folds": 2, "repeats": 1, "seed": 3},
            "output": "impute", "execution": {"n_jobs": 1, "progress": False}}
    path = tmp / "impute.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cfg = load_config(path)
    result = run(cfg)
    assert not result.experiment_errors and result.failures.empty
    X = read_features(cfg.output_dir / "features_clinical.csv")
    assert X.loc[held].isna().all()  # the missing values reach the pipeline as NaN
    pred = pd.read_csv(cfg.output_dir / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    train = pred.index[pred["fold"] != pred.loc[held, "fold"]]
    assert len(train) == 6 and held not in train

    labels = (df.set_index("case_id")["label"] == "short").astype(int)
    exp, routes = cfg.experiments[0], {"clinical": list(X.columns)}
    pipe = build_pipeline(exp, routes, 3, impute=fold_imputer(cfg, routes)).fit(X.loc[train], labels.loc[train])
    filled = pipe.named_steps["impute"].transform(X.loc[[held]])
    fold_ages = df.set_index("case_id").loc[train, "age"].astype(float)
    cohort_median = np.median([float(a) for a in ages if a])
    assert fold_ages.median() != cohort_median  # the fold's median is not the cohort's
    assert filled.loc[held, "clinical_age"] == fold_ages.median()
    counts = df.set_index("case_id").loc[train, "stage"].value_counts()
    mode = sorted(counts.index[counts == counts.max()])[0]
    assert filled.loc[held, [f"clinical_stage_{s}" for s in ("I", "II", "III")]].tolist() == \
        [1.0 if s == mode else 0.0 for s in ("I", "II", "III")]
    assert pred.loc[held, "score"] == pytest.approx(pipe.predict_proba(X.loc[[held]])[0, 1], abs=1e-12)
    # imputing from the whole cohort would have scored the case differently
    whole = build_pipeline(exp, routes, 3, impute=fold_imputer(cfg, routes)).fit(X.loc[train], labels.loc[train])
    whole.named_steps["impute"].medians_["clinical_age"] = cohort_median
    assert whole.predict_proba(X.loc[[held]])[0, 1] != pytest.approx(pred.loc[held, "score"], abs=1e-9)
    assert "imputed inside each fold" in (cfg.output_dir / "report.html").read_text(encoding="utf-8")
    # predict: the final model's imputer (fitted on every case) fills a new case's missing age
    unlabelled = rewrite_manifest(tmp / "cohort" / "manifest_impute.csv", prefix="i")
    res = __import__("radiodeep.predict", fromlist=["predict"]).predict(cfg.output_dir, unlabelled, tmp / "scored_imp")
    assert res.failures.empty and f"i{held}" in set(res.predictions["case_id"])
    model = load_model(cfg.output_dir / "models" / "clin-lr.joblib")
    assert model.pipeline.named_steps["impute"].medians_["clinical_age"] == cohort_median
    got = res.predictions.set_index("case_id").loc[f"i{held}", "score"]
    row = X.loc[[held]].rename(index={held: f"i{held}"})
    assert got == model.pipeline.predict_proba(row)[0, 1]
