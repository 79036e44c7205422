"""Filters applied after a ranking: drop selected features that duplicate a better one."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import _ContiguousMixin, loo_fits
from .relieff import ReliefF

class CorrelationFilter(_ContiguousMixin, SelectorMixin, BaseEstimator):
    """Drop a selected feature whose |Pearson r| with a better-ranked selected one exceeds ``threshold``.

    The wrapped ``selector`` (default :class:`ReliefF`) picks and ranks the features (its
    ``ranking_``; a :class:`RouteTopK` interleaves its routes); walking its selection
    best first, a feature is kept unless it correlates above ``threshold`` (on the training
    data) with one already kept. Fewer than ``k`` features may remain.

    Attributes
    ----------
    selector_ : the fitted wrapped selector
    dropped_ : dict feature index -> index of the kept feature it duplicates
    """

    def __init__(self, selector=None, threshold=0.9):
        self.selector = selector
        self.threshold = threshold

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _check(self):
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 < t <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {t!r}")

    def _base(self):
        return ReliefF() if self.selector is None else self.selector

    def _filter(self, sel, Xa: np.ndarray) -> None:
        support = sel.get_support()
        ranked = [int(i) for i in sel.ranking_ if support[i]]
        if len(ranked) > 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.corrcoef(Xa[:, ranked], rowvar=False)
            r = np.nan_to_num(np.abs(np.atleast_2d(r)), nan=0.0)
        kept: list[int] = []
        dropped: dict[int, int] = {}
        for a, i in enumerate(ranked):
            hit = next((ranked[b] for b in kept if r[a, b] > self.threshold), None) if kept else None
            if hit is None:
                kept.append(a)
            else:
                dropped[i] = hit
        mask = np.zeros(Xa.shape[1], dtype=bool)
        mask[[ranked[a] for a in kept]] = True
        self.selector_ = sel
        self.support_ = mask
        self.dropped_ = dropped
        self.scores_ = getattr(sel, "scores_", None)
        self.ranking_ = getattr(sel, "ranking_", None)

    def fit(self, X, y):
        self._check()
        Xa, ya = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        sel = clone(self._base()).fit(X, y)
        self._filter(sel, Xa)
        self.classes_ = np.unique(ya)
        return self

    def loo_fits(self, X, y) -> Iterator["CorrelationFilter"]:
        self._check()
        tmpl = clone(self)
        Xa, ya = validate_data(tmpl, X, y, dtype=np.float64, ensure_min_samples=2)
        n = Xa.shape[0]
        for q, sel in enumerate(loo_fits(self._base(), X, y)):
            est = clone(self)
            for attr in ("n_features_in_", "feature_names_in_"):
                if hasattr(tmpl, attr):
                    setattr(est, attr, getattr(tmpl, attr))
            keep = np.delete(np.arange(n), q)
            est._filter(sel, Xa[keep])
            est.classes_ = np.unique(ya[keep])
            yield est

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_

