"""Everything radiodeep takes from scikit-learn's private tree internals, in one place.

:class:`RandomForest` gives exactly what ``RandomForestClassifier`` gives with the same
arguments (every tree, every probability), but fits and predicts several times faster on the
small training sets of radiomics folds: the per-tree Python bookkeeping of scikit-learn (cloning,
parameter and target validation) is done once per forest instead of once per tree, by growing
each tree directly with scikit-learn's (private) tree builder. Anything outside the plain case
(sample weights, class weights, out-of-bag scores, warm start, missing values, sparse input, ...)
is handed to ``RandomForestClassifier`` itself.

The private API used (``sklearn.tree._classes.CRITERIA_CLF``/``DENSE_SPLITTERS``,
``sklearn.tree._tree.Tree``/``DepthFirstTreeBuilder``) is tested on the range
``TESTED_SKLEARN`` (also pyproject's pin). At first use, :func:`fast_forest_ok` fits a tiny forest
both ways; on any difference (or any error, or a scikit-learn outside the range) it warns once
and every :class:`RandomForest` falls back to scikit-learn's own forest: slower, never different.
"""

from __future__ import annotations

import numbers
import threading
import warnings

import numpy as np
import sklearn
from scipy.sparse import issparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

__all__ = ["RandomForest", "fast_forest_ok", "TESTED_SKLEARN"]

_MAX_INT = np.iinfo(np.int32).max

#: scikit-learn versions (major, minor) whose tree internals the fast forest is tested on
TESTED_SKLEARN = ((1, 6), (1, 9))

_CHECK: dict = {}
_CHECK_LOCK = threading.Lock()


def _version() -> tuple[int, int]:
    parts = sklearn.__version__.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def _self_check() -> str | None:
    """None when the fast forest equals scikit-learn's on a tiny problem, else why not."""
    lo, hi = TESTED_SKLEARN
    if not lo <= _version() <= hi:
        return (f"scikit-learn {sklearn.__version__} is outside the tested range "
                f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}")
    rng = np.random.RandomState(0)
    X = rng.normal(size=(24, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=24) > 0).astype(int)
    kw = {"n_estimators": 7, "random_state": 3, "max_features": "sqrt"}
    try:
        fast = RandomForest(**kw)
        fast._fast_fit(X, y)
        ref = RandomForestClassifier(**kw).fit(X, y)
        same = all(
            np.array_equal(getattr(a.tree_, attr), getattr(b.tree_, attr))
            for a, b in zip(fast.estimators_, ref.estimators_)
            for attr in ("feature", "threshold", "value", "children_left", "children_right"))
        same = same and np.array_equal(fast.predict_proba(X), ref.predict_proba(X))
    except Exception as err:  # noqa: BLE001 - any failure of the private API means: do not use it
        return f"the fast path failed: {type(err).__name__}: {err}"
    return None if same else "the fast path grew different trees than RandomForestClassifier"


def fast_forest_ok() -> bool:
    """Whether the fast forest may be used here (checked once per process; warns if not)."""
    with _CHECK_LOCK:
        if "ok" not in _CHECK:
            why = _self_check()
            _CHECK["ok"], _CHECK["why"] = why is None, why
            if why is not None:
                warnings.warn(f"radiodeep's fast random forest is off ({why}); scikit-learn's "
                              f"RandomForestClassifier is used instead (same results, slower)",
                              RuntimeWarning, stacklevel=3)
    return _CHECK["ok"]


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
    ``RandomForestClassifier.fit``; otherwise, or when :func:`fast_forest_ok` finds that
    scikit-learn's internals differ, it simply calls ``RandomForestClassifier.fit``.
    """

    def fit(self, X, y, sample_weight=None):
        if sample_weight is None and self._plain() and fast_forest_ok():
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
