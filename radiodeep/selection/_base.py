"""What every selector here shares: ``k`` checks, ranking, the fitted-copy helper, LOO helpers."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

# Weka's Utils.eq tolerance: a feature whose training range is below this is constant.
_WEKA_EQ = 1e-6
_MAX_INT32 = np.iinfo(np.int32).max

def _check_k(k) -> None:
    if isinstance(k, str):
        if k != "all":
            raise ValueError(f"k must be a positive integer or 'all', got {k!r}")
        return
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer or 'all', got {k!r}")


def _top_mask(scores: np.ndarray, ranking: np.ndarray, k) -> np.ndarray:
    p = scores.shape[0]
    mask = np.zeros(p, dtype=bool)
    if k == "all" or k >= p:
        mask[:] = True
    else:
        mask[ranking[:k]] = True
    return mask


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Columns best first; ties to the lowest column index (NaN scores last)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-s, kind="mergesort")


class _ContiguousMixin:
    """``transform`` returns a C-contiguous array whatever the input's memory layout.

    The models after the selector then see the same bytes whether the selection was fitted in
    the pipeline or taken from :func:`loo_fits` (float reductions depend on the layout).
    """

    def transform(self, X):
        Xt = super().transform(X)
        return np.ascontiguousarray(Xt) if isinstance(Xt, np.ndarray) else Xt


class _RankingSelector(_ContiguousMixin, SelectorMixin, BaseEstimator):
    """A selector that scores every column and keeps the ``k`` best."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _validate_fit(self, X, y, *, reset: bool = True, est=None):
        est = self if est is None else est
        _check_k(self.k)
        X, y = validate_data(est, X, y, dtype=np.float64, order="C", ensure_min_samples=2,
                             reset=reset)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        return X, y_enc.astype(np.intp), classes

    def _set_fitted(self, scores: np.ndarray, classes: np.ndarray) -> None:
        self.scores_ = np.asarray(scores, dtype=np.float64)
        self.ranking_ = _ranking(self.scores_)
        self.classes_ = classes
        p = self.scores_.shape[0]
        if self.k != "all" and self.k > p:
            warnings.warn(f"k={self.k} is greater than the number of features ({p}); all are kept",
                          UserWarning, stacklevel=3)

    def _get_support_mask(self):
        check_is_fitted(self, "scores_")
        return _top_mask(self.scores_, self.ranking_, self.k)

    def fit(self, X, y):
        X, y_enc, classes = self._validate_fit(X, y)
        self._set_fitted(self._scores(X, y_enc, len(classes)), classes)
        return self

    def _scores(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _fitted_copy(self, scores, classes, template) -> "_RankingSelector":
        est = clone(self)
        for attr in ("n_features_in_", "feature_names_in_"):
            if hasattr(template, attr):
                setattr(est, attr, getattr(template, attr))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            est._set_fitted(scores, classes)
        return est



# --------------------------------------------------------------------------- LOO helpers
def _take_rows(a, idx):
    if hasattr(a, "iloc"):
        return a.iloc[idx]
    return np.asarray(a)[idx]


def _cold_loo(selector, X, y) -> Iterator:
    n = len(X)
    for q in range(n):
        keep = np.delete(np.arange(n), q)
        yield clone(selector).fit(_take_rows(X, keep), _take_rows(y, keep))


def loo_fits(selector, X, y) -> Iterator:
    """``selector`` fitted on all rows but one, for each row in turn (shared work if it can)."""
    if hasattr(selector, "loo_fits"):
        return selector.loo_fits(X, y)
    return _cold_loo(selector, X, y)

