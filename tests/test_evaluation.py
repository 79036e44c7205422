"""Evaluation: no leakage, exact shared-work LOO, schemes, metrics and their intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from radiodeep.config import CLASSIFIERS, EvaluationConfig, ExperimentConfig
from radiodeep.evaluation import (
    pairwise_delong,
    EvaluationResult,
    delong_ci,
    delong_test,
    evaluate,
    wilson_ci,
)
from radiodeep.experiment import build_pipeline
from radiodeep.selection import RouteTopK, SymmetricUncertainty
from radiodeep.stats import binary_metrics, delong_variance

ROOT = Path(__file__).resolve().parents[1]
LOO = EvaluationConfig(scheme="loo", seed=0)


# --------------------------------------------------------------------------- data
def _noise(n=40, n_deep=1000, n_hand=1000, seed=0):
    """Pure noise: random balanced labels, deep (ReLU'd) and handcrafted columns."""
    rng = np.random.default_rng(seed)
    deep = [f"alexnet_fc7_r_{i:04d}" for i in range(n_deep)]
    hand = [f"original_firstorder_f{i:04d}" for i in range(n_hand)]
    X = pd.DataFrame(np.c_[np.maximum(rng.normal(size=(n, n_deep)), 0),
                           rng.lognormal(size=(n, n_hand)) * 100],
                     columns=deep + hand, index=[f"case{i:02d}" for i in range(n)])
    y = pd.Series(rng.permutation(np.arange(n) % 2), index=X.index, name="label")
    return X, y, {"deep": deep, "handcrafted": hand}


def _signal(n=40, seed=1):
    X, y, routes = _noise(n, 60, 40, seed)
    rng = np.random.default_rng(seed)
    X.iloc[:, 3] += 3.0 * y.to_numpy()
    X.iloc[:, 70] += 500 * y.to_numpy() * (1 + rng.uniform(size=n))
    return X, y, routes


def _exp(name, features, select, classifier):
    return ExperimentConfig(name=name, features=features, select=select, classifier=classifier)


def _builtin_experiments() -> list[ExperimentConfig]:
    """The experiments shipped in pipelines/*/study.yaml and sample_configs/*.yaml, plus ReliefF
    top 10 over both routes for any classifier they do not use, and one without selection."""
    found: dict[str, ExperimentConfig] = {}
    for path in sorted(ROOT.glob("pipelines/*/study.yaml")) + sorted(ROOT.glob("sample_configs/*.yaml")):
        for e in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("experiments") or []:
            exp = ExperimentConfig.model_validate(e)
            if "image" in exp.features:  # networks trained on the ROI: tests/test_learned.py (noise, leak)
                continue
            key = exp.model_dump_json(exclude={"name"})
            found.setdefault(key, exp)
    covered = {e.classifier.name for e in found.values()}
    for clf in CLASSIFIERS:
        if clf not in covered:
            exp = _exp(f"both-relieff10-{clf}", ["deep", "handcrafted"], {"method": "relieff", "k": 10}, clf)
            found.setdefault(exp.model_dump_json(exclude={"name"}), exp)
    found.setdefault("none", _exp("deep-none-nb", ["deep"], {"method": "none"}, "naive_bayes"))
    return list(found.values())


def _columns(X, routes, exp):
    cols = [c for r in exp.features for c in routes[r]]
    return X[cols], {r: routes[r] for r in exp.features}


# --------------------------------------------------------------------------- leakage
def _forests_capped(exp: ExperimentConfig, n_trees: int = 25) -> ExperimentConfig:
    if exp.classifier.name != "random_forest":
        return exp
    params = {**exp.classifier.params, "n_estimators": min(n_trees, exp.classifier.params.get("n_estimators", 200))}
    return exp.model_copy(update={"classifier": type(exp.classifier)(name="random_forest", **params)})


def test_no_built_in_experiment_finds_signal_in_noise_but_outside_selection_would():
    # One noise data set says little: at 40 cases x 2,000 features, honest leave-one-out AUCs on
    # noise spread from about 0.1 to 0.85 (chance features that hold for the whole cohort are
    # selected in every fold), around a mean at or below 0.5 (leaving a case out tilts the
    # training classes against it). So every built-in experiment runs on six noise data sets
    # (the sd of a six-set mean is about 0.06): its mean AUC must not be inflated (at most 0.65),
    # nor the mean over all experiments (at most 0.55); while selecting on all cases first, then
    # cross-validating the classifier alone, inflates both published combined experiments on
    # every data set tried. Forests are capped at 25 trees to keep this fast.
    exps = [_forests_capped(e) for e in _builtin_experiments()]
    assert len(exps) >= 8
    aucs = {e.name: [] for e in exps}
    honest, leaky = [], []
    for seed in range(6):
        X, y, routes = _noise(seed=seed)
        for exp in exps:
            Xe, r = _columns(X, routes, exp)
            res = evaluate(build_pipeline(exp, r, seed=0), Xe, y, LOO, experiment=exp.name, n_jobs=2)
            assert len(res.predictions) == len(y)
            aucs[exp.name].append(res.metrics["auc"])
            if exp.name in ("both-relieff5+5-nb", "both-su5+5-rf") and seed < 2:
                honest.append(res.metrics["auc"])
        if seed >= 2:
            continue
        for method, clf in (("relieff", "naive_bayes"), ("su", {"name": "random_forest", "n_estimators": 25})):
            exp = _exp("leaky", ["deep", "handcrafted"], {"method": method, "k_per_route": 5}, clf)
            pipe = build_pipeline(exp, routes, seed=0)
            chosen = pipe[0].fit(X, y).get_feature_names_out()
            res = evaluate(Pipeline(pipe.steps[1:]), X[chosen], y, LOO, experiment="leaky")
            leaky.append(res.metrics["auc"])
    means = {k: float(np.mean(v)) for k, v in aucs.items()}
    assert max(means.values()) <= 0.65, means  # a leaking pipeline gives ~0.9 or more
    assert np.mean(list(means.values())) <= 0.55, means
    assert len(honest) == 4 and min(leaky) >= 0.8, leaky
    assert np.mean(leaky) - np.mean(honest) >= 0.3, (leaky, honest)


# --------------------------------------------------------------------------- exact shared work
@pytest.mark.parametrize("select,clf", [
    ({"method": "relieff", "k_per_route": 3}, "naive_bayes"),
    ({"method": "su", "k_per_route": 3}, "random_forest"),
    ({"method": "relieff", "k": 6, "correlation_threshold": 0.5}, "svm_rbf"),
    ({"method": "su", "k": 5}, "logistic_regression"),
    ({"method": "relieff", "k": 4, "neighbours": 3, "sample": 20}, "svm_linear"),
])
def test_fast_loo_predictions_equal_plain_refits(select, clf):
    X, y, routes = _signal(n=24)
    exp = _exp("e", ["deep", "handcrafted"], select, {"name": clf, "n_estimators": 30} if clf == "random_forest" else clf)
    pipe = build_pipeline(exp, routes, seed=5)
    fast = evaluate(pipe, X, y, LOO, experiment="e")
    cold = evaluate(pipe, X, y, LOO, experiment="e", fast=False)
    pd.testing.assert_frame_equal(fast.predictions, cold.predictions, check_exact=True)
    pd.testing.assert_series_equal(fast.selection_frequency, cold.selection_frequency, check_exact=True)
    assert fast.metrics == cold.metrics
    # folds in parallel threads: the same numbers
    par = evaluate(pipe, X, y, LOO, experiment="e", n_jobs=2)
    pd.testing.assert_frame_equal(fast.predictions, par.predictions, check_exact=True)


def test_pipeline_is_refitted_in_every_fold_on_its_training_cases_only():
    X, y, routes = _signal(n=20)
    seen = []

    class Spy(SymmetricUncertainty):
        def fit(self, X, y):
            seen.append(tuple(np.asarray(X)[:, -1]))
            return super().fit(X, y)

    exp = _exp("spy", ["deep", "handcrafted"], {"method": "su", "k": 3}, "naive_bayes")
    pipe = build_pipeline(exp, routes, seed=0)
    pipe.steps[0] = ("select", Spy(k=3))
    res = evaluate(pipe, X, y, LOO, experiment="spy", fast=False)
    assert len(seen) == 20
    for fold_cases, left_out in zip(seen, res.predictions["case_id"]):
        assert X.loc[left_out].iloc[-1] not in fold_cases and len(fold_cases) == 19


# --------------------------------------------------------------------------- results and schemes
def test_loo_result_layout_and_metrics():
    X, y, routes = _signal()
    exp = _exp("both-relieff3+3-nb", ["deep", "handcrafted"], {"method": "relieff", "k_per_route": 3},
               "naive_bayes")
    res = evaluate(build_pipeline(exp, routes, seed=0), X, y, LOO, experiment=exp.name)
    assert isinstance(res, EvaluationResult) and res.experiment == exp.name
    p = res.predictions
    assert list(p.columns) == ["case_id", "y_true", "score", "y_pred", "fold", "repeat", "experiment"]
    assert p["case_id"].tolist() == X.index.tolist() and (p["repeat"] == 0).all()
    assert p["fold"].tolist() == list(range(len(X)))
    assert ((p["score"] > 0.5).astype(int) == p["y_pred"]).all()
    m = res.metrics
    for key in ("auc", "auc_ci_low", "auc_ci_high", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                "balanced_accuracy", "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
                "specificity", "specificity_ci_low", "specificity_ci_high", "n", "n_pos",
                "tn", "fp", "fn", "tp"):
        assert key in m, key
    assert m["auc"] > 0.85 and m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == m["n"] == 40 and m["n_pos"] == 20
    assert m["accuracy"] == pytest.approx((m["tp"] + m["tn"]) / 40)
    # selection frequency: each fit keeps 3 + 3 features
    f = res.selection_frequency
    assert f.sum() == pytest.approx(6.0) and f.max() <= 1.0 and f.index[0] in (X.columns[3], X.columns[70])
    assert f.is_monotonic_decreasing


def test_decision_function_scores_and_zero_threshold():
    X, y, routes = _signal(n=30)
    exp = _exp("svm", ["deep"], {"method": "su", "k": 5}, "svm_linear")
    res = evaluate(build_pipeline(exp, routes, seed=0), X[routes["deep"]], y, LOO, experiment="svm")
    p = res.predictions
    assert (p["score"] < 0).any() and ((p["score"] > 0).astype(int) == p["y_pred"]).all()


def test_repeated_kfold_is_reproducible_and_averages_repeats():
    X, y, routes = _signal(n=30)
    cfg = EvaluationConfig(scheme="repeated_kfold", folds=3, repeats=4, seed=2)
    exp = _exp("rk", ["deep", "handcrafted"], {"method": "su", "k": 4},
               {"name": "random_forest", "n_estimators": 25})
    pipe = build_pipeline(exp, routes, seed=0)
    a = evaluate(pipe, X, y, cfg, experiment="rk")
    b = evaluate(pipe, X, y, cfg, experiment="rk")
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    p = a.predictions
    assert len(p) == 30 * 4 and sorted(p["repeat"].unique()) == [0, 1, 2, 3]
    assert p.groupby("repeat")["case_id"].nunique().eq(30).all()
    assert set(p["fold"]) == {0, 1, 2}
    # one definition: all repeats pooled, each case once per repeat (the ROC curve's area)
    from sklearn.metrics import roc_auc_score

    assert a.metrics["auc"] == pytest.approx(roc_auc_score(p["y_true"], p["score"]), abs=1e-12)
    tp = int(((p.y_true == 1) & (p.y_pred == 1)).sum())
    fn = int(((p.y_true == 1) & (p.y_pred == 0)).sum())
    assert (a.metrics["tp"], a.metrics["fn"]) == (tp, fn)
    assert a.metrics["tp"] + a.metrics["fn"] + a.metrics["tn"] + a.metrics["fp"] == 30 * 4
    assert a.metrics["sensitivity"] == tp / (tp + fn)
    assert a.metrics["repeats"] == 4 and a.metrics["n"] == 30 and a.metrics["n_pos"] == int(y.sum())
    assert a.selection_frequency.sum() == pytest.approx(4.0)
    other = evaluate(pipe, X, y, EvaluationConfig(scheme="repeated_kfold", folds=3, repeats=4, seed=3))
    assert not other.predictions["fold"].equals(p["fold"])


def test_external_validation_trains_on_one_split_and_tests_on_the_other():
    X, y, routes = _signal(n=40)
    split = pd.Series(["train"] * 28 + ["test"] * 12, index=X.index)
    split.iloc[5] = "unused"
    cfg = EvaluationConfig(scheme="external", train_split="train", test_split="test")
    exp = _exp("ext", ["deep", "handcrafted"], {"method": "relieff", "k": 4}, "naive_bayes")
    pipe = build_pipeline(exp, routes, seed=0)
    res = evaluate(pipe, X, y, cfg, experiment="ext", split=split)
    assert res.predictions["case_id"].tolist() == X.index[28:].tolist()
    assert res.metrics["n"] == 12 and (res.selection_frequency == 1.0).all()
    train = [i for i in X.index[:28] if i != X.index[5]]
    manual = clone(pipe).fit(X.loc[train], y.loc[train]).predict_proba(X.iloc[28:])[:, 1]
    np.testing.assert_array_equal(res.predictions["score"].to_numpy(), manual)
    with pytest.raises(ValueError, match="split"):
        evaluate(pipe, X, y, cfg, experiment="ext")
    with pytest.raises(ValueError, match="no case in the test split 'holdout'"):
        evaluate(pipe, X, y, EvaluationConfig(scheme="external", test_split="holdout"), split=split)


def test_permutation_test_is_opt_in_and_deterministic():
    X, y, routes = _signal(n=20)
    exp = _exp("perm", ["deep", "handcrafted"], {"method": "relieff", "k": 3}, "naive_bayes")
    pipe = build_pipeline(exp, routes, seed=0)
    assert "perm_p" not in evaluate(pipe, X, y, LOO).metrics
    cfg = EvaluationConfig(scheme="loo", permutations=4, seed=4)
    a = evaluate(pipe, X, y, cfg)
    b = evaluate(pipe, X, y, cfg)
    assert a.metrics["perm_p"] == b.metrics["perm_p"] == pytest.approx(0.2)  # (1 + 0) / (1 + 4)
    assert a.metrics["perm_n"] == 4 and np.array_equal(a.null_aucs, b.null_aucs)
    assert a.null_aucs.max() < a.metrics["auc"]


def test_experiments_that_cannot_run_raise_value_errors():
    X, y, routes = _signal(n=20)
    with pytest.raises(ValueError, match="k=500 but the experiment has only 100 features"):
        build_pipeline(_exp("big", ["deep", "handcrafted"], {"method": "su", "k": 500}, "naive_bayes"),
                       routes, 0)
    with pytest.raises(ValueError, match="k_per_route=50 but route 'handcrafted' has only 40"):
        build_pipeline(_exp("pr", ["deep", "handcrafted"], {"method": "su", "k_per_route": 50}, "naive_bayes"),
                       routes, 0)
    with pytest.raises(ValueError, match="no features for route"):
        build_pipeline(_exp("r", ["deep", "handcrafted"], {"method": "su", "k": 5}, "naive_bayes"),
                       {"deep": routes["deep"]}, 0)
    pipe = build_pipeline(_exp("ok", ["deep"], {"method": "su", "k": 5}, "naive_bayes"), routes, 0)
    with pytest.raises(ValueError, match="experiment tiny: k=5 but X has only 3 features"):
        evaluate(pipe, X.iloc[:, :3], y, LOO, experiment="tiny")
    Xn = X.copy()
    Xn.iloc[2, 7] = np.nan
    with pytest.raises(ValueError, match="missing or infinite values in 1 column"):
        evaluate(pipe, Xn, y, LOO)
    with pytest.raises(ValueError, match="single class"):
        evaluate(pipe, X, y * 0, LOO)
    with pytest.raises(ValueError, match="at least 2 cases of each class"):
        evaluate(pipe, X, pd.Series(np.r_[1, np.zeros(19, int)], index=X.index), LOO)
    with pytest.raises(ValueError, match="0/1 labels"):
        evaluate(pipe, X, y.map({0: "long", 1: "short"}), LOO)
    with pytest.raises(ValueError, match="different cases"):
        evaluate(pipe, X, y.iloc[:-1], LOO)


def test_build_pipeline_steps():
    _, _, routes = _noise(n=10, n_deep=20, n_hand=10)
    pipe = build_pipeline(_exp("a", ["deep", "handcrafted"], {"method": "relieff", "k_per_route": 5},
                               "svm_rbf"), routes, seed=9)
    assert [n for n, _ in pipe.steps] == ["select", "scale", "clf"]
    sel = pipe.named_steps["select"]
    assert isinstance(sel, RouteTopK) and sel.selector.random_state == 9
    assert sel.routes == routes
    pipe = build_pipeline(_exp("b", ["deep"], {"method": "none"}, "random_forest"), routes, seed=9)
    assert [n for n, _ in pipe.steps] == ["clf"] and pipe[-1].random_state == 9


# --------------------------------------------------------------------------- statistics
def test_delong_ci_on_a_hand_example():
    # positives .9 .8 .4, negatives .7 .3 .2: AUC = 8/9
    # placements: positives 1, 1, 2/3 (var 1/27); negatives 2/3, 1, 1 (var 1/27)
    # Var = 1/27/3 + 1/27/3 = 2/81, SE = sqrt(2)/9
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    auc, lo, hi = delong_ci(y, s)
    se = math.sqrt(2) / 9
    assert auc == pytest.approx(8 / 9, abs=1e-12)
    assert lo == pytest.approx(8 / 9 - 1.959963984540054 * se, abs=1e-9)
    assert hi == 1.0  # clipped
    # ties count one half: scores all equal -> AUC .5, no variance
    assert delong_ci(y, np.ones(6))[:1] == (0.5,)


def _delong_by_placements(y, a, b):
    """DeLong et al. (1988) from the definition, with explicit loops."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(u, v):
        return 1.0 if u > v else 0.5 if u == v else 0.0

    comps = []
    for s in (a, b):
        v10 = np.array([np.mean([psi(s[i], s[j]) for j in neg]) for i in pos])
        v01 = np.array([np.mean([psi(s[i], s[j]) for i in pos]) for j in neg])
        comps.append((v10.mean(), v10, v01))
    s10 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.vstack([comps[0][2], comps[1][2]]))
    S = s10 / len(pos) + s01 / len(neg)
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    return comps[0][0], comps[1][0], (comps[0][0] - comps[1][0]) / math.sqrt(var)


def test_auc_on_hanley_and_mcneil_s_published_example():
    """Hanley & McNeil (1982), Radiology 143:29, Table 1: 109 CT images rated 1-5 (58 normal,
    51 abnormal); published AUC 0.893 and standard error 0.032 (their exponential approximation,
    which DeLong's nonparametric estimate should come close to)."""
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.ones(51, int), np.zeros(58, int)]
    auc, var = delong_variance(y, np.r_[pos, neg])
    assert round(auc, 3) == 0.893
    assert math.sqrt(var) == pytest.approx(0.032, abs=0.002)


def test_delong_test_against_the_definition():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(15, int), np.zeros(20, int)]
    a = y + rng.normal(size=35)
    b = np.round(0.5 * y + rng.normal(size=35), 1)  # ties
    r = delong_test(y, a, b)
    auc_a, auc_b, z = _delong_by_placements(y, a, b)
    assert r["auc_a"] == pytest.approx(auc_a) and r["auc_b"] == pytest.approx(auc_b)
    assert r["diff"] == pytest.approx(auc_a - auc_b) and r["z"] == pytest.approx(z)
    assert r["p"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))))
    same = delong_test(y, a, a)
    assert same["z"] == 0.0 and same["p"] == 1.0


def test_wilson_ci_known_values():
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_ci(36, 40, level=0.99)[0] < wilson_ci(36, 40)[0]
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    # scipy's own Wilson interval (no continuity correction), at several levels
    from scipy.stats import binomtest

    for k, n, level in ((81, 263, 0.95), (8, 10, 0.95), (3, 40, 0.99), (17, 17, 0.9)):
        ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert wilson_ci(k, n, level) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_pairwise_delong_uses_the_metrics_auc_and_the_definition():
    X, y, routes = _signal(n=30)
    a = evaluate(build_pipeline(_exp("a", ["deep", "handcrafted"], {"method": "relieff", "k": 4},
                                     "naive_bayes"), routes, 0), X, y, LOO, experiment="a")
    b = evaluate(build_pipeline(_exp("b", ["deep"], {"method": "none"}, "naive_bayes"), routes, 0),
                 X[routes["deep"]], y, LOO, experiment="b")
    table = pairwise_delong(pd.concat([a.predictions, b.predictions], ignore_index=True))
    assert len(table) == 1
    r = table.iloc[0]
    assert (r["experiment_a"], r["experiment_b"], r["n"]) == ("a", "b", 30)
    assert r["auc_a"] == a.metrics["auc"] and r["auc_b"] == b.metrics["auc"]
    yt = a.predictions["y_true"].to_numpy()
    auc_a, auc_b, z = _delong_by_placements(yt, a.predictions["score"].to_numpy(),
                                            b.predictions["score"].to_numpy())
    assert r["z"] == pytest.approx(z, rel=1e-9)


def test_repeats_of_identical_scores_do_not_narrow_the_intervals():
    """Clustered by case, R identical repeats give one repeat's AUC, variance and Wilson bounds."""
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(12, int), np.zeros(17, int)]
    s = y + rng.normal(size=29)
    s2 = 0.5 * y + rng.normal(size=29)
    ids = np.array([f"c{i:02d}" for i in range(29)])
    R = 5
    yr, sr, s2r, idr = np.tile(y, R), np.tile(s, R), np.tile(s2, R), np.tile(ids, R)
    one = delong_variance(y, s)
    rep = delong_variance(yr, sr, groups=idr)
    assert rep[0] == pytest.approx(one[0], abs=1e-12) and rep[1] == pytest.approx(one[1], rel=1e-9)
    # without the grouping the same rows would claim a far smaller variance
    assert delong_variance(yr, sr)[1] < one[1] / 3
    t1, tr = delong_test(y, s, s2), delong_test(yr, sr, s2r, groups=idr)
    assert tr["z"] == pytest.approx(t1["z"], rel=1e-9)
    yp = (s > 0.5).astype(int)
    m1 = binary_metrics(y, s, yp)
    mr = binary_metrics(yr, sr, np.tile(yp, R), groups=idr)
    assert mr["tp"] == R * m1["tp"] and mr["n"] == 29 and mr["repeats"] == R
    for key in ("sensitivity", "sensitivity_ci_low", "specificity_ci_high", "accuracy_ci_low", "auc_ci_low"):
        assert mr[key] == pytest.approx(m1[key], abs=1e-12), key
