"""Classifiers from the config, and the fast random forest's equality with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from radiodeep.config import CLASSIFIERS, ClassifierConfig
from radiodeep.experiment import build_classifier
from radiodeep.sklearn_compat import RandomForest


def _cfg(name, **kw):
    return ClassifierConfig(name=name, **kw)


def test_every_configured_classifier_builds_and_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = (X[:, 0] + rng.normal(scale=0.5, size=40) > 0).astype(int)
    for name in CLASSIFIERS:
        est = build_classifier(_cfg(name), seed=3)
        est.fit(X, y)
        assert hasattr(est, "predict_proba") or hasattr(est, "decision_function"), name
        if name.startswith("svm"):
            assert not hasattr(est, "predict_proba")
            assert est.decision_function(X).shape == (40,)


def test_classifier_defaults_scaling_and_seeds():
    rf = build_classifier(_cfg("random_forest"), seed=7)
    assert isinstance(rf, RandomForest) and rf.n_estimators == 200 and rf.random_state == 7
    svm = build_classifier(_cfg("svm_rbf"), seed=7)
    assert isinstance(svm, Pipeline) and isinstance(svm[0], StandardScaler)
    assert isinstance(svm[-1], SVC) and svm[-1].kernel == "rbf"
    lin = build_classifier(_cfg("svm_linear", C=0.1), seed=7)
    assert lin[-1].kernel == "linear" and lin[-1].C == 0.1
    lr = build_classifier(_cfg("logistic_regression"), seed=7)
    assert isinstance(lr[0], StandardScaler) and isinstance(lr[-1], LogisticRegression)
    assert isinstance(build_classifier(_cfg("naive_bayes"), seed=7), GaussianNB)
    tree = build_classifier(_cfg("decision_tree", max_depth=3), seed=7)
    assert isinstance(tree, DecisionTreeClassifier) and tree.max_depth == 3 and tree.random_state == 7
    # the config's own seed and class weights win
    rf = build_classifier(_cfg("random_forest", n_estimators=50, random_state=1,
                               class_weight="balanced"), seed=7)
    assert (rf.n_estimators, rf.random_state, rf.class_weight) == (50, 1, "balanced")


def test_bad_classifier_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown argument.*n_trees"):
        build_classifier(_cfg("random_forest", n_trees=10), seed=0)
    with pytest.raises(ValueError, match="priors, not class weights"):
        build_classifier(_cfg("naive_bayes", class_weight="balanced"), seed=0)
    with pytest.raises(ValueError, match="kernel is fixed"):
        build_classifier(_cfg("svm_rbf", kernel="linear"), seed=0)
    with pytest.raises(ValueError, match="random_forest"):
        build_classifier(_cfg("random_forest", n_estimators=-3), seed=0)


def _same_forest(a, b, X):
    assert len(a.estimators_) == len(b.estimators_)
    for ta, tb in zip(a.estimators_, b.estimators_):
        assert ta.random_state == tb.random_state
        for attr in ("feature", "threshold", "value", "children_left", "children_right",
                     "n_node_samples", "impurity"):
            assert np.array_equal(getattr(ta.tree_, attr), getattr(tb.tree_, attr)), attr
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert np.array_equal(a.predict(X), b.predict(X))
    assert np.array_equal(a.feature_importances_, b.feature_importances_)


@pytest.mark.parametrize("kw", [
    {},
    {"max_features": None, "max_depth": 3},
    {"criterion": "entropy", "min_samples_leaf": 3, "min_samples_split": 0.1},
    {"max_features": 0.5, "min_weight_fraction_leaf": 0.05, "min_impurity_decrease": 0.01},
])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_random_forest_equals_sklearn_s(kw, n_classes):
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(70, 9))
    y = rng.integers(0, n_classes, 70)
    labels = np.array(["long", "short", "mid"])[y]  # string labels too
    Xt = rng.normal(size=(15, 9))
    kw = {"n_estimators": 40, "random_state": 11, **kw}
    ours = RandomForest(**kw).fit(X, labels)
    assert ours._fast_fitted
    _same_forest(RandomForestClassifier(**kw).fit(X, labels), ours, Xt)
    # a RandomState seed draws the same tree seeds too
    a = RandomForestClassifier(n_estimators=10, random_state=np.random.RandomState(5)).fit(X, y)
    b = RandomForest(n_estimators=10, random_state=np.random.RandomState(5)).fit(X, y)
    _same_forest(a, b, Xt)


def test_random_forest_falls_back_to_sklearn_outside_the_plain_case():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 2, 50)
    w = rng.uniform(0.5, 2, 50)
    for kw, fit_kw in (({"class_weight": "balanced"}, {}), ({}, {"sample_weight": w}),
                       ({"oob_score": True}, {}), ({"max_leaf_nodes": 6}, {})):
        ours = RandomForest(n_estimators=15, random_state=0, **kw).fit(X, y, **fit_kw)
        assert not ours._fast_fitted
        _same_forest(RandomForestClassifier(n_estimators=15, random_state=0, **kw).fit(X, y, **fit_kw),
                     ours, X)
    Xn = X.copy()
    Xn[3, 1] = np.nan  # missing values: scikit-learn's own handling
    ours = RandomForest(n_estimators=5, random_state=0).fit(Xn, y)
    assert not ours._fast_fitted


@parametrize_with_checks([RandomForest(n_estimators=8, random_state=0)], expected_failed_checks=lambda e: {
    # as for RandomForestClassifier itself (bootstrap draws are not weight-equivalent)
    "check_sample_weight_equivalence_on_dense_data": "bootstrap sampling",
    "check_sample_weight_equivalence_on_sparse_data": "bootstrap sampling",
})
def test_random_forest_sklearn_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- compatibility module
def _reset_check(monkeypatch):
    from radiodeep import sklearn_compat

    monkeypatch.setattr(sklearn_compat, "_CHECK", {})
    return sklearn_compat


def test_fast_forest_self_check_passes_on_the_installed_sklearn(monkeypatch):
    compat = _reset_check(monkeypatch)
    assert compat.fast_forest_ok()
    assert compat._CHECK == {"ok": True, "why": None}


def test_fast_forest_falls_back_with_a_warning_when_internals_differ(monkeypatch):
    # a scikit-learn whose "best" splitter grew other trees: the self-check must see it
    compat = _reset_check(monkeypatch)
    real = compat._tree_internals

    def changed():
        criteria, splitters, tree, builder = real()
        return criteria, {**splitters, "best": splitters["random"]}, tree, builder

    monkeypatch.setattr(compat, "_tree_internals", changed)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 6))
    y = (X[:, 0] > 0).astype(int)
    with pytest.warns(RuntimeWarning, match="fast random forest is off.*different trees"):
        ours = RandomForest(n_estimators=12, random_state=2).fit(X, y)
    assert not ours._fast_fitted
    _same_forest(RandomForestClassifier(n_estimators=12, random_state=2).fit(X, y), ours, X)


def test_fast_forest_refuses_an_untested_sklearn(monkeypatch):
    compat = _reset_check(monkeypatch)
    monkeypatch.setattr(compat, "_version", lambda: (9, 0))
    with pytest.warns(RuntimeWarning, match="outside the tested range"):
        assert not compat.fast_forest_ok()


def test_pyproject_pins_the_tested_sklearn_range():
    import re
    from pathlib import Path

    from radiodeep.sklearn_compat import TESTED_SKLEARN

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    lo, hi = TESTED_SKLEARN
    assert re.search(rf'"scikit-learn>={lo[0]}\.{lo[1]},<{hi[0]}\.{hi[1] + 1}"', text)


# --------------------------------------------------------------------------- the classifier registry
def test_config_names_are_the_registry_s():
    from radiodeep.experiment import CLASSIFIERS as REGISTRY

    assert CLASSIFIERS is REGISTRY  # one list: the config validates against the builders' registry
    with pytest.raises(Exception, match="unknown classifier 'svm_rfb'"):
        ClassifierConfig(name="svm_rfb")


def test_a_new_classifier_kind_registers_itself(monkeypatch):
    from radiodeep import experiment
    from radiodeep.config import ExperimentConfig

    monkeypatch.setattr(experiment, "CLASSIFIERS", dict(experiment.CLASSIFIERS))
    spec = experiment.register_classifier(experiment.ClassifierSpec(
        "knn", "sklearn.neighbors:KNeighborsClassifier", {"n_neighbors": 3}, scaled=True))
    assert experiment.CLASSIFIERS["knn"] is spec
    with pytest.raises(ValueError, match="already registered"):
        experiment.register_classifier(experiment.ClassifierSpec("knn", "sklearn.svm:SVC"))
    exp = ExperimentConfig.model_construct(
        name="k", features=["deep"], select=ExperimentConfig.model_fields["select"].default_factory(),
        classifier=ClassifierConfig.model_construct(name="knn"))
    pipe = experiment.build_pipeline(exp, {"deep": ["a", "b"]}, seed=0)
    assert [n for n, _ in pipe.steps] == ["scale", "clf"] and pipe[-1].n_neighbors == 3
    # a model that reads the images itself takes no selector
    experiment.register_classifier(experiment.ClassifierSpec(
        "img", "sklearn.dummy:DummyClassifier", inputs="image"))
    exp_img = ExperimentConfig.model_construct(
        name="i", features=["deep"], select=ExperimentConfig.model_fields["select"].default_factory(),
        classifier=ClassifierConfig.model_construct(name="img"))
    assert [n for n, _ in experiment.build_pipeline(exp_img, {"deep": ["a"]}, seed=0).steps] == ["clf"]
