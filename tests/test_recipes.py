"""Each study recipe in pipelines/ runs end to end on a phantom cohort (small settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from radiodeep.config import parse_config
from radiodeep.features.weights import fallback_deep_settings
from radiodeep.pipeline import run
from radiodeep.synth import make_cohort

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "lung_adenocarcinoma_survival": {"modality": "ct", "split": False},
    "brain_mr_survival": {"modality": "mr", "split": False},
    "screening_nodules": {"modality": "ct", "split": True},
    "brain_mr_finetune": {"modality": "mr", "split": False, "n_cases": 8, "size": 32},  # trains 16 networks
}


def small(data: dict, manifest: Path, out: Path) -> dict:
    """The recipe as shipped, on a phantom cohort, with settings small enough for a test."""
    data["cohort"]["manifest"] = str(manifest)
    data["cohort"]["positive_label"] = "short"  # the phantoms' labels
    data["roi"]["size"] = 64
    deep = data["features"].get("deep")
    if deep:  # the recipe's network when its weights are here, else EfficientNet-Lite0's (installed)
        deep, _ = fallback_deep_settings(deep, base_dir=ROOT / "pipelines")
        data["features"]["deep"] = {**deep, "batch_size": 8}
    for exp in data["experiments"]:
        if isinstance(exp["classifier"], dict) and "n_estimators" in exp["classifier"]:
            exp["classifier"]["n_estimators"] = 10
        if exp["features"] == ["image"]:  # learned: one epoch, small batches, one thread
            exp["classifier"].update(epochs=1, batch_size=4, threads=1)
            exp["classifier"].get("then", {}).update(n_estimators=10)
    data["output"] = str(out)
    data["execution"] = {"n_jobs": 1, "progress": False}
    return data


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_on_phantoms(name, tmp_path):
    spec = RECIPES[name]
    recipe = ROOT / "pipelines" / name / "study.yaml"
    n_cases = spec.get("n_cases", 12)
    manifest = make_cohort(tmp_path / "cohort", n_cases=n_cases, seed=11, modality=spec["modality"],
                           split=spec["split"])
    data = small(yaml.safe_load(recipe.read_text(encoding="utf-8")), manifest, tmp_path / "out")
    data["roi"]["size"] = spec.get("size", data["roi"]["size"])
    cfg = parse_config(data, base_dir=recipe.parent, source=str(recipe))
    res = run(cfg)
    assert not res.experiment_errors, res.experiment_errors
    assert res.random_weights == []  # real ImageNet features, whatever this machine has
    assert "NOT IMAGENET FEATURES" not in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    prov = json.loads((tmp_path / "out" / "features_deep.provenance.json").read_text(encoding="utf-8"))
    assert prov["weights"]["backbone"] == prov["backbone"] == cfg.features.deep.backbone
    assert len(prov["weights"]["sha256"]) == 64 and prov["weights"]["licence"]
    assert set(res.metrics.experiment) == {e.name for e in cfg.experiments}
    assert (tmp_path / "out" / "report.html").is_file()
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    if spec["split"]:  # external validation: predictions on the test cohort only
        test_ids = set(pd.read_csv(manifest).query("split == 'test'").case_id)
        assert set(preds.case_id) == test_ids
    else:
        assert preds.groupby("experiment").case_id.nunique().eq(n_cases).all()
    if name == "screening_nodules":  # channels: each -> three feature sets named by channel
        cols = pd.read_csv(tmp_path / "out" / "features_deep.csv", nrows=1).columns
        assert {c.rsplit("_", 2)[1] for c in cols if c != "case_id"} == {"r", "g", "b"}
    if name == "brain_mr_finetune":  # fine-tuned beside frozen features of the same network, same cases
        delong = pd.read_csv(tmp_path / "out" / "delong.csv")
        pairs = set(zip(delong.experiment_a, delong.experiment_b))
        assert {("frozen-lite0-su10-rf", "finetune-lite0"), ("frozen-lite0-su10-rf", "finetune-lite0-rf")} <= pairs
        assert (delong["n"] == n_cases).all()
        assert len(list((tmp_path / "out" / "audit" / "finetune-lite0").glob("heldout_*.json"))) == n_cases


def test_cnn_ensemble_recipe_on_a_phantom_pair(tmp_path):
    """The ensemble recipe, tiny: two phantom cohorts scanned differently, train 1 -> test 2."""
    from radiodeep.synth import make_cohort_pair

    recipe = ROOT / "pipelines" / "screening_nodules_cnn_ensemble" / "study.yaml"
    manifest = make_cohort_pair(tmp_path / "cohort", n_train=8, n_test=6, seed=11)
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    data["cohort"].update(manifest=str(manifest), positive_label="short")
    data["roi"].update(size=30, window_px=40)  # a 30 crop, networks see its centred 20
    clf = data["experiments"][0]["classifier"]
    assert clf["architectures"] == ["usf1", "usf2", "usf3"] and clf["augment"]["mode"] == "circle"
    clf.update(input_size=20, epochs=1, batch_size=16, early_stopping=1, threads=1, device="cpu",
               augment={"mode": "circle", "rotate_deg": 90, "flip": ["horizontal", "vertical"]})
    data["output"] = str(tmp_path / "out")
    data["execution"] = {"n_jobs": 1, "progress": False}
    cfg = parse_config(data, base_dir=recipe.parent, source=str(recipe))
    res = run(cfg)
    assert not res.experiment_errors, res.experiment_errors
    members = {f"usf-ensemble/{a}-s0" for a in ("usf1", "usf2", "usf3")}
    assert set(res.metrics.experiment) == {"usf-ensemble", "usf-ensemble[median]", "usf-ensemble[vote]"} | members
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    test_ids = set(pd.read_csv(manifest).query("split == 'test'").case_id)
    assert all(set(g.case_id) == test_ids for _, g in preds.groupby("experiment"))  # cohort 2 only
    ens = preds[preds.experiment == "usf-ensemble"].set_index("case_id").score
    mem = preds[preds.experiment.isin(members)].pivot(index="case_id", columns="experiment", values="score")
    np.testing.assert_allclose(ens.loc[mem.index], mem.mean(axis=1))  # average of the three
    delong = pd.read_csv(tmp_path / "out" / "delong.csv")
    pairs = {frozenset(p) for p in zip(delong.experiment_a, delong.experiment_b)}
    assert all(frozenset({"usf-ensemble", m}) in pairs for m in members)
    summary = json.loads((tmp_path / "out" / "ensembles" / "usf-ensemble" / "summary.json").read_text(encoding="utf-8"))
    assert summary["members_used"] == {m.split("/")[1]: 1 for m in members} and not summary["members_failed"]
    assert len(summary["delong_ensemble_vs"]) == 5 and "seed spread" in summary["seed_spread"]
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "usf-ensemble/usf2-s0" in html and "seed spread" in html
    audit = list((tmp_path / "out" / "audit").rglob("*.json"))
    assert audit and all(not json.loads(p.read_text(encoding="utf-8"))["leak"] for p in audit)
