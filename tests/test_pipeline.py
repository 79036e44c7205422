"""End to end: config -> features -> experiments -> outputs, resume, and isolated failures."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from radiodeep.config import load_config
from radiodeep.pipeline import RunError, run
from radiodeep.synth import make_cohort

ROOT = Path(__file__).resolve().parents[1]


def study(tmp_path: Path, n_cases: int = 10, **over) -> Path:
    manifest = tmp_path / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_cohort(manifest.parent, n_cases=n_cases, seed=5)
    cfg = {
        "name": "pipeline test",
        "cohort": {"manifest": "cohort/manifest.csv", "positive_label": "short"},
        "roi": {"size": 64, "window_px": 48},
        "features": {
            "handcrafted": {"mode": "3d", "settings": {"binWidth": 25},
                            "params": str(ROOT / "sample_configs" / "pyradiomics_ct.yaml")},
            "deep": {"backbone": "alexnet", "weights": None, "layer": "fc7", "batch_size": 4},
        },
        "experiments": [
            {"name": "deep-su5-nb", "features": ["deep"], "select": {"method": "su", "k": 5},
             "classifier": "naive_bayes"},
            {"name": "both-relieff3+3-rf", "features": ["deep", "handcrafted"],
             "select": {"method": "relieff", "k_per_route": 3},
             "classifier": {"name": "random_forest", "n_estimators": 20}},
            {"name": "too-many", "features": ["handcrafted"], "select": {"method": "su", "k": 100000},
             "classifier": "naive_bayes"},
        ],
        "evaluation": {"scheme": "loo", "seed": 0},
        "output": "results",
        "execution": {"n_jobs": 1, "progress": False},
    }
    for key, value in over.items():
        cfg[key] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(study(tmp))
    return cfg, run(cfg)


def test_every_output_is_written(finished):
    cfg, res = finished
    out = cfg.output_dir
    for name in ("features_deep.csv", "features_handcrafted.csv", "features_deep.provenance.json",
                 "predictions.csv", "metrics.csv", "metrics.json", "selected_features.csv",
                 "failures.csv", "delong.csv", "report.html", "config.resolved.yaml",
                 "environment.json", "crops_contact_sheet.png"):
        assert (out / name).is_file(), name
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds.experiment) == {"deep-su5-nb", "both-relieff3+3-rf"}
    assert len(preds[preds.experiment == "deep-su5-nb"]) == 10  # one LOO prediction per case
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"auc", "auc_ci_low", "accuracy", "sensitivity", "specificity"} <= set(metrics.columns)
    deep = pd.read_csv(out / "features_deep.csv", index_col="case_id")
    assert deep.shape == (10, 4096) and deep.columns[0] == "alexnet_fc7_r_0000"
    env = json.loads((out / "environment.json").read_text(encoding="utf-8"))
    assert env["packages"]["torch"].startswith("2.13")


def test_an_experiment_that_cannot_run_fails_alone(finished):
    _, res = finished
    assert "too-many" in res.experiment_errors
    assert "too-many" not in set(res.metrics.experiment)
    assert len(res.metrics) == 2
    html = (res.output_dir / "report.html").read_text(encoding="utf-8")
    assert "too-many" in html


def test_rerun_reuses_every_cache_and_gives_identical_numbers(finished):
    cfg, res = finished
    cache_files = {p: p.stat().st_mtime_ns for p in cfg.cache_dir.rglob("*.npz")}
    assert len(cache_files) == 20  # 10 cases x 2 routes
    again = run(cfg)
    assert {p: p.stat().st_mtime_ns for p in cfg.cache_dir.rglob("*.npz")} == cache_files
    pd.testing.assert_frame_equal(res.metrics, again.metrics)
    pd.testing.assert_frame_equal(res.predictions, again.predictions)


EXACT_OUTPUTS = ("metrics.csv", "predictions.csv", "selected_features.csv", "failures.csv", "delong.csv")


def _hide_images(cohort: Path) -> Path:
    """Move every file of the cohort but its manifest away (an image opened now would fail)."""
    away = cohort.parent / (cohort.name + "-away")
    away.mkdir()
    for p in cohort.iterdir():
        if p.name != "manifest.csv":
            shutil.move(str(p), str(away / p.name))
    return away


def _restore(away: Path, cohort: Path) -> None:
    for p in away.iterdir():
        shutil.move(str(p), str(cohort / p.name))
    away.rmdir()


def test_only_evaluate_is_the_full_run_byte_for_byte_without_opening_an_image(finished):
    cfg, res = finished
    out = cfg.output_dir
    before = {name: (out / name).read_bytes() for name in EXACT_OUTPUTS}
    cohort = cfg.resolve(cfg.cohort.manifest).parent
    away = _hide_images(cohort)
    try:
        again = run(cfg, only="evaluate")
    finally:
        _restore(away, cohort)
    for name in EXACT_OUTPUTS:
        assert (out / name).read_bytes() == before[name], name
    pd.testing.assert_frame_equal(res.metrics, again.metrics)
    pd.testing.assert_frame_equal(res.predictions, again.predictions)
    pd.testing.assert_frame_equal(res.selection.reset_index(drop=True), again.selection.reset_index(drop=True))
    pd.testing.assert_frame_equal(res.delong, again.delong)
    record = json.loads((out / "run_record.json").read_text(encoding="utf-8"))
    assert record["computed"] == ["extract", "evaluate"]
    assert set(record["routes"]) == {"deep", "handcrafted"}


def test_evaluation_sees_exactly_the_extracted_numbers(finished):
    """The exported CSV reads back bit for bit (%.10g did not: ties between features flipped)."""
    from radiodeep.features.store import read_features

    cfg, res = finished
    for route, table in res.features.items():
        back = read_features(cfg.output_dir / f"features_{route}.csv")
        pd.testing.assert_frame_equal(back, table.astype("float64"), check_exact=True,
                                      check_index_type=False)


def test_report_numbers_equal_metrics_csv_loo(finished):
    from report_check import check_report_numbers

    cfg, _ = finished
    assert check_report_numbers(cfg.output_dir) > 30


def test_report_numbers_equal_metrics_csv_repeated_kfold(finished, tmp_path):
    """Same features, repeated k-fold: one AUC, one confusion matrix, one DeLong AUC everywhere."""
    from report_check import check_report_numbers

    cfg, _ = finished
    copy = tmp_path / "rkf"
    copy.mkdir()
    for p in cfg.output_dir.iterdir():
        if p.is_file():
            shutil.copy2(p, copy / p.name)
    rk = cfg.model_copy(deep=True)
    rk.output = copy
    rk.execution.cache_dir = cfg.cache_dir
    rk.evaluation.scheme = "repeated_kfold"
    rk.evaluation.folds, rk.evaluation.repeats = 3, 3
    res = run(rk, only="evaluate")
    m = pd.read_csv(copy / "metrics.csv")
    assert (m["repeats"] == 3).all() and (m["tp"] + m["fn"] + m["tn"] + m["fp"] == 30).all()
    text = (copy / "report.html").read_text(encoding="utf-8")
    assert "3\u00d7 repeated 3-fold" in text and "counted once per repeat (3 repeats)" in text
    assert check_report_numbers(copy) > 30
    assert len(res.delong) == 1


def test_report_is_a_function_of_the_run_record(finished, tmp_path):
    """The record and the tables it names redraw the same report, in any folder."""
    import re

    from radiodeep.record import RunRecord, write_report

    cfg, _ = finished
    record = RunRecord.load(cfg.output_dir)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ["run_record.json", *record.outputs.values()]:
        shutil.copy2(cfg.output_dir / name, copy / name)
    html = write_report(record, copy).read_text(encoding="utf-8")

    def strip(text):
        return re.sub(r"Generated [0-9-]+ [0-9:]+ UTC", "", text)

    assert strip(html) == strip((cfg.output_dir / "report.html").read_text(encoding="utf-8"))


def test_only_evaluate_refuses_features_made_with_other_settings(finished, tmp_path):
    cfg, _ = finished
    other = cfg.model_copy(deep=True)
    other.features.handcrafted.settings = {"binWidth": 10}
    before = (cfg.output_dir / "metrics.csv").read_bytes()
    with pytest.raises(RunError, match="features_handcrafted.csv was made with other handcrafted settings"):
        run(other, only="evaluate")
    assert (cfg.output_dir / "metrics.csv").read_bytes() == before
    # a feature table edited after extraction is refused too
    table = cfg.output_dir / "features_handcrafted.csv"
    original = table.read_bytes()
    try:
        table.write_bytes(original.replace(b",", b",0", 1))
        with pytest.raises(RunError, match="features_handcrafted.csv changed since it was extracted"):
            run(cfg, only="evaluate")
    finally:
        table.write_bytes(original)
    assert (cfg.output_dir / "metrics.csv").read_bytes() == before


def test_invalid_case_blocks_the_run_unless_skipped(tmp_path):
    path = study(tmp_path, n_cases=6)
    manifest = tmp_path / "cohort" / "manifest.csv"
    df = pd.read_csv(manifest)
    df.loc[0, "mask"] = "masks/none.nrrd"
    df.to_csv(manifest, index=False)
    with pytest.raises(RunError, match=r"case ct000: mask file not found"):
        run(load_config(path))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"]["on_invalid"] = "skip"
    data["experiments"] = data["experiments"][:1]
    data["features"].pop("handcrafted")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    res = run(load_config(path))
    assert res.failures.case_id.tolist() == ["ct000"]
    assert "mask file not found" in res.failures.reason[0]
    assert len(res.predictions) == 5
    # the failures persist through --only evaluate (which opens no image): file and report
    out = tmp_path / "results"
    failures = (out / "failures.csv").read_bytes()
    again = run(load_config(path), only="evaluate")
    assert (out / "failures.csv").read_bytes() == failures
    assert again.failures.case_id.tolist() == ["ct000"]
    assert "mask file not found" in (out / "report.html").read_text(encoding="utf-8")


def test_unwritable_output_is_refused_before_any_computation(tmp_path):
    path = study(tmp_path, n_cases=4)
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the output folder should be", encoding="utf-8")
    cfg = load_config(path)
    cfg.output = blocker / "results"
    with pytest.raises(RunError, match="is not writable"):
        run(cfg)
    assert not (tmp_path / "results").exists()


def test_killed_extraction_resumes_without_losing_finished_cases(tmp_path):
    path = study(tmp_path, n_cases=8)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["features"].pop("deep")
    data["experiments"] = []
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    cache = tmp_path / "results" / "cache" / "handcrafted"
    proc = subprocess.Popen([sys.executable, "-m", "radiodeep.cli", "run", str(path), "--only", "extract"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.rglob("*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    assert 2 <= len(done) < 8, "the run should have been killed part-way"
    res = run(load_config(path), only="extract")
    assert res.features["handcrafted"].shape[0] == 8
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished work was kept
