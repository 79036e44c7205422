"""cnn_scratch / cnn_ensemble experiments through the config and the pipeline (tiny settings)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from radiodeep.config import ConfigError, parse_config
from radiodeep.pipeline import run
from radiodeep.synth import make_cohort, make_cohort_pair
from radiodeep.validate import check_routes

TINY = {"epochs": 1, "batch_size": 4, "threads": 1, "device": "cpu"}


def _config(manifest, out, classifier, scheme=None, roi_size=20):
    return {
        "name": "t",
        "cohort": {"manifest": str(manifest), "positive_label": "short"},
        "roi": {"slice": "largest", "crop": "window", "window_px": 32, "size": roi_size,
                "intensity": {"modality": "CT"}},
        "features": {"image": {"channels": "ct_windows"}},
        "experiments": [{"name": "cnn", "features": ["image"], "classifier": classifier}],
        "evaluation": scheme or {"scheme": "loo", "seed": 0},
        "output": str(out),
        "execution": {"n_jobs": 1, "progress": False},
    }


def test_cnn_scratch_loo_is_reproducible(tmp_path):
    manifest = make_cohort(tmp_path / "c", n_cases=6, seed=2)
    clf = {"name": "cnn_scratch", "architecture": "usf1", "channels": [0, 1], **TINY}
    scores = []
    for k in range(2):
        cfg = parse_config(_config(manifest, tmp_path / f"out{k}", clf))
        res = run(cfg)
        assert not res.experiment_errors, res.experiment_errors
        assert res.predictions.case_id.nunique() == 6
        scores.append(res.predictions.set_index("case_id").score)
    pd.testing.assert_series_equal(scores[0], scores[1])
    audits = list((tmp_path / "out0" / "audit" / "cnn").glob("*.json"))
    assert len(audits) == 6  # one per held-out case


def test_size_mismatch_is_reported_before_any_case_is_read(tmp_path):
    manifest = make_cohort(tmp_path / "c", n_cases=4, seed=2)
    cfg = parse_config(_config(manifest, tmp_path / "out", {"name": "cnn_ensemble", "input_size": 100, **TINY},
                               roi_size=64))
    problems = check_routes(cfg)
    assert any("usf1 expects 100×100 inputs but the ROI stage gives 64×64 (roi.size: 64)" in p for p in problems)
    assert len(problems) == 3  # usf1, usf2, usf3
    cfg = parse_config(_config(manifest, tmp_path / "out", {"name": "cnn_scratch",
                                                           "architecture": "tests.user_nets:Tiny", **TINY}))
    assert any("expects 32×32 inputs but is asked for 20×20" in p for p in check_routes(cfg))


@pytest.mark.parametrize("bad, message", [
    ({"name": "cnn_ensemble", "combine": "mean"}, "combine"),
    ({"name": "cnn_ensemble", "early_stopping": 3}, "early_stopping needs an inner validation split"),
    ({"name": "cnn_ensemble", "seeds": 0}, "seeds must be at least 1"),
    ({"name": "cnn_scratch", "channels": [0, 3]}, "distinct indices among 0, 1, 2"),
])
def test_config_errors(tmp_path, bad, message):
    manifest = make_cohort(tmp_path / "c", n_cases=4, seed=2)
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(manifest, tmp_path / "out", bad))


def test_ensemble_external_with_a_diverging_member(tmp_path):
    manifest = make_cohort_pair(tmp_path / "pair", n_train=6, n_test=4, seed=5)
    clf = {"name": "cnn_ensemble", "architectures": ["usf1", {"name": "tests.user_nets:Exploding", "label": "boom"}],
           "seeds": [0, 1], "combine": "all", **TINY}
    scheme = {"scheme": "external", "train_split": "train", "test_split": "test", "seed": 0}
    res = run(parse_config(_config(manifest, tmp_path / "out", clf, scheme)))
    assert not res.experiment_errors, res.experiment_errors
    assert set(res.metrics.experiment) == {"cnn", "cnn[median]", "cnn[vote]", "cnn/usf1-s0", "cnn/usf1-s1"}
    assert set(res.predictions.case_id) == set(pd.read_csv(manifest).query("split == 'test'").case_id)
    summary = json.loads((tmp_path / "out" / "ensembles" / "cnn" / "summary.json").read_text(encoding="utf-8"))
    assert summary["members_used"] == {"usf1-s0": 1, "usf1-s1": 1}
    assert set(summary["members_failed"]) == {"boom-s0", "boom-s1"}
    assert "diverged" in summary["members_failed"]["boom-s0"][0]
    assert "usf1: AUC" in summary["seed_spread"]  # two seeds of usf1: the spread is measured
