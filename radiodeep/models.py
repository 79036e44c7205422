"""Classifiers of the experiments, built from the config.

``build_classifier`` turns a :class:`~radiodeep.config.ClassifierConfig` into a scikit-learn
estimator with ``predict_proba`` or ``decision_function``:

===================== ==========================================================================
name                  estimator (extra keys of the config are its keyword arguments)
===================== ==========================================================================
random_forest         :class:`RandomForest` (a ``RandomForestClassifier``), 200 trees
svm_rbf               ``StandardScaler`` + ``SVC(kernel="rbf")``: decision scores (AUC), 0 cut
svm_linear            ``StandardScaler`` + ``SVC(kernel="linear")``
naive_bayes           ``GaussianNB``
logistic_regression   ``StandardScaler`` + ``LogisticRegression(max_iter=5000)``
decision_tree         ``DecisionTreeClassifier``
===================== ==========================================================================

The seed goes to ``random_state`` (unless the config sets one); ``class_weight`` (e.g.
``balanced``) is passed through to the models that take it.

:class:`RandomForest` gives exactly what ``RandomForestClassifier`` gives with the same
arguments (every tree, every probability), but fits and predicts several times faster on the
small training sets of radiomics folds: the per-tree Python bookkeeping of scikit-learn (cloning,
parameter and target validation) is done once per forest instead of once per tree. Anything
outside the plain case (sample weights, class weights, out-of-bag scores, warm start, missing
values, sparse input, ...) is handed to ``RandomForestClassifier`` itself.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np
from scipy.sparse import issparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

__all__ = ["RandomForest", "build_classifier", "CLASSIFIER_DEFAULTS", "needs_scaling"]

_MAX_INT = np.iinfo(np.int32).max

#: defaults applied before the config's own keyword arguments
CLASSIFIER_DEFAULTS: dict[str, dict] = {
    "random_forest": {"n_estimators": 200},
    "svm_rbf": {"kernel": "rbf", "C": 1.0, "gamma": "scale"},
    "svm_linear": {"kernel": "linear", "C": 1.0},
    "naive_bayes": {},
    "logistic_regression": {"C": 1.0, "max_iter": 5000},
    "decision_tree": {},
}


def needs_scaling(name: str) -> bool:
    """Whether the model is standardised inside its pipeline (SVMs, logistic regression)."""
    return name in ("svm_rbf", "svm_linear", "logistic_regression")


class _Unsupported(Exception):
    """The fast forest path does not cover this case; use scikit-learn's own."""


def _tree_internals():
    from sklearn.tree import _classes as tree_classes
    from sklearn.tree._tree import DepthFirstTreeBuilder, Tree

    return tree_classes.CRITERIA_CLF, tree_classes.DENSE_SPLITTERS, Tree, DepthFirstTreeBuilder


class RandomForest(RandomForestClassifier):
    """``RandomForestClassifier`` with the same results and a faster fit/predict on small data.

    Same parameters and attributes as :class:`sklearn.ensemble.RandomForestClassifier`. In the
    plain case (dense finite data, one target, bootstrap, no sample or class weights, no
    out-of-bag score, no warm start, depth-first trees without pruning) the trees are grown
    directly with scikit-learn's tree builder, drawing the same seeds and bootstrap samples as
    ``RandomForestClassifier.fit``; otherwise, or if scikit-learn's internals ever differ, it
    simply calls ``RandomForestClassifier.fit``.
    """

    def fit(self, X, y, sample_weight=None):
        if sample_weight is None and self._plain():
            try:
                return self._fast_fit(X, y)
            except _Unsupported:
                pass
            except (ImportError, AttributeError, TypeError):  # pragma: no cover - other sklearn
                pass
        self._fast_fitted = False
        return super().fit(X, y, sample_weight=sample_weight)

    def _plain(self) -> bool:
        return (self.bootstrap and not self.oob_score and not self.warm_start
                and self.max_samples is None and self.class_weight is None
                and self.criterion in ("gini", "entropy", "log_loss")
                and self.monotonic_cst is None and self.max_leaf_nodes is None
                and self.ccp_alpha == 0.0)

    def _fast_fit(self, X, y):
        if issparse(X):
            raise _Unsupported
        self._validate_params()
        X, y = validate_data(self, X, y, multi_output=True, dtype=np.float32,
                             ensure_all_finite=False)
        y = np.asarray(y)
        if y.ndim != 1 or not np.isfinite(X).all():
            raise _Unsupported
        check_classification_targets(y)
        criteria, splitters, Tree, Builder = _tree_internals()
        n, p = X.shape
        classes, y_enc = np.unique(y, return_inverse=True)
        n_classes = np.array([classes.shape[0]], dtype=np.intp)
        Y = np.ascontiguousarray(y_enc.reshape(-1, 1), dtype=np.float64)
        X = np.asarray(X, dtype=np.float32)

        mf = self.max_features
        if isinstance(mf, str):
            max_features = max(1, int(np.sqrt(p))) if mf == "sqrt" else max(1, int(np.log2(p)))
        elif mf is None:
            max_features = p
        elif isinstance(mf, numbers.Integral):
            max_features = int(mf)
        else:
            max_features = max(1, int(mf * p)) if mf > 0.0 else 0
        msl = self.min_samples_leaf
        min_samples_leaf = msl if isinstance(msl, numbers.Integral) else int(np.ceil(msl * n))
        mss = self.min_samples_split
        min_samples_split = (mss if isinstance(mss, numbers.Integral)
                             else max(2, int(np.ceil(mss * n))))
        min_samples_split = max(min_samples_split, 2 * min_samples_leaf)
        max_depth = _MAX_INT if self.max_depth is None else self.max_depth

        self._validate_estimator()
        params = {name: getattr(self, name) for name in self.estimator_params}
        random_state = check_random_state(self.random_state)
        trees = []
        # one generator re-seeded per use: the same streams as fresh RandomState(seed) objects,
        # without the cost of building one (entropy gathering) twice per tree
        rs = np.random.RandomState(0)
        for _ in range(self.n_estimators):
            seed = random_state.randint(_MAX_INT)
            tree = DecisionTreeClassifier(**params)
            tree.random_state = seed
            rs.seed(seed)
            draws = rs.randint(0, n, n).astype(np.int32)
            sample_weight = np.bincount(draws, minlength=n).astype(np.float64)
            min_weight_leaf = self.min_weight_fraction_leaf * np.sum(sample_weight)
            criterion = criteria[self.criterion](1, n_classes)
            rs.seed(seed)
            splitter = splitters["best"](criterion, max_features, min_samples_leaf, min_weight_leaf,
                                         rs, None)
            tree_ = Tree(p, n_classes, 1)
            Builder(splitter, min_samples_split, min_samples_leaf, min_weight_leaf, max_depth,
                    self.min_impurity_decrease).build(tree_, X, Y, sample_weight, None)
            tree.n_features_in_ = p
            tree.n_outputs_ = 1
            tree.classes_ = classes
            tree.n_classes_ = int(n_classes[0])
            tree.max_features_ = max_features
            tree.tree_ = tree_
            trees.append(tree)
        self.estimators_ = trees
        self._n_samples = n
        self.n_outputs_ = 1
        self._n_samples_bootstrap = n
        self._sample_weight = None
        self.classes_ = classes
        self.n_classes_ = int(n_classes[0])
        self._fast_fitted = True
        return self

    def predict_proba(self, X):
        if not getattr(self, "_fast_fitted", False):
            return super().predict_proba(X)
        check_is_fitted(self)
        if issparse(X):
            return super().predict_proba(X)
        Xv = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite=False)
        if not np.isfinite(Xv).all():  # scikit-learn's own handling of missing values
            return super().predict_proba(X)
        X = np.asarray(Xv, dtype=np.float32)
        nc = self.n_classes_
        out = np.zeros((X.shape[0], nc), dtype=np.float64)
        for tree in self.estimators_:  # the order and arithmetic of the forest's own loop
            out += tree.predict_proba(X, check_input=False)
        out /= len(self.estimators_)
        return out


_FACTORIES = {
    "random_forest": RandomForest,
    "svm_rbf": SVC,
    "svm_linear": SVC,
    "naive_bayes": GaussianNB,
    "logistic_regression": LogisticRegression,
    "decision_tree": DecisionTreeClassifier,
}


def build_classifier(cfg, seed: int):
    """The estimator a :class:`~radiodeep.config.ClassifierConfig` describes, seeded with ``seed``.

    SVMs and logistic regression come as a ``Pipeline`` (``scale`` -> ``clf``) so that their
    inputs are standardised with the training fold's statistics; the others are bare estimators.
    Raises ``ValueError`` naming the bad key for an argument the estimator does not take.
    """
    name = cfg.name
    if name not in _FACTORIES:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(_FACTORIES)}")
    factory = _FACTORIES[name]
    kwargs = dict(CLASSIFIER_DEFAULTS[name])
    user = dict(cfg.params)
    if name.startswith("svm_") and "kernel" in user and user["kernel"] != kwargs["kernel"]:
        raise ValueError(f"classifier {name}: kernel is fixed by the name (use svm_rbf or svm_linear)")
    kwargs.update(user)
    accepted = set(inspect.signature(factory.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        hint = " (naive Bayes takes priors, not class weights)" if "class_weight" in unknown else ""
        raise ValueError(f"classifier {name}: unknown argument(s) {unknown}{hint}; "
                         f"accepted: {sorted(accepted)}")
    if "random_state" in accepted and "random_state" not in user:
        kwargs["random_state"] = int(seed)
    try:
        est = factory(**kwargs)
        est._validate_params()
    except (TypeError, ValueError) as err:
        raise ValueError(f"classifier {name}: {err}") from None
    if needs_scaling(name):
        return Pipeline([("scale", StandardScaler()), ("clf", est)])
    return est
