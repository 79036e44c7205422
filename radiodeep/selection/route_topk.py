"""Route top-k: rank each feature route on its own, keep the union of every route's best."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import _check_k, _ContiguousMixin, loo_fits
from .relieff import ReliefF

def _feature_names(X) -> np.ndarray | None:
    cols = getattr(X, "columns", None)
    if cols is None:
        return None
    return np.asarray([str(c) for c in cols], dtype=object)


def _resolve_routes(routes, names: np.ndarray | None, p: int) -> dict[str, np.ndarray]:
    """Route name -> column indices, from column names or positions (None: one route of all)."""
    if routes is None:
        return {"all": np.arange(p, dtype=np.intp)}
    if isinstance(routes, Mapping):
        items = list(routes.items())
    elif isinstance(routes, Sequence) and not isinstance(routes, str):
        items = [(f"route{i}", cols) for i, cols in enumerate(routes)]
    else:
        raise ValueError(f"routes must be a mapping name -> columns or a list of column lists, got {type(routes).__name__}")
    lookup = None if names is None else {c: i for i, c in enumerate(names)}
    resolved: dict[str, np.ndarray] = {}
    seen = np.full(p, "", dtype=object)
    for r, cols in items:
        cols = list(np.atleast_1d(np.asarray(cols, dtype=object))) if not isinstance(cols, (list, tuple)) else list(cols)
        idx = []
        for c in cols:
            if isinstance(c, (numbers.Integral, np.integer)) and not isinstance(c, bool):
                if not 0 <= int(c) < p:
                    raise ValueError(f"route {r!r}: column index {c} out of range (n_features = {p})")
                idx.append(int(c))
            else:
                if lookup is None:
                    raise ValueError(f"route {r!r} names columns, but X has no feature names (pass a DataFrame)")
                if str(c) not in lookup:
                    missing = [x for x in cols if str(x) not in lookup]
                    raise ValueError(f"route {r!r}: {len(missing)} column(s) not in X, e.g. {missing[:3]}")
                idx.append(lookup[str(c)])
        idx_arr = np.asarray(idx, dtype=np.intp)
        if idx_arr.size == 0:
            raise ValueError(f"route {r!r} has no columns")
        clash = [i for i in idx_arr if seen[i]]
        if clash:
            raise ValueError(f"column {clash[0]} belongs to routes {seen[clash[0]]!r} and {r!r}")
        seen[idx_arr] = r
        resolved[str(r)] = idx_arr
    return resolved


class RouteTopK(_ContiguousMixin, SelectorMixin, BaseEstimator):
    """Rank each feature route on its own and keep the union of every route's top ``k_per_route``.

    Parameters
    ----------
    selector : ranking selector (e.g. :class:`ReliefF` or :class:`SymmetricUncertainty`)
        Cloned and fitted on each route's columns alone, with its ``k`` set to the route's count.
    routes : mapping route -> columns, list of column lists, or None
        Columns as names (``X`` a DataFrame) or integer positions. Columns in no route are never
        selected. None: every column forms one route (the wrapped selector's own top k).
    k_per_route : int or mapping route -> int, default 5
        Features kept from each route ("all" keeps a whole route).

    Attributes
    ----------
    routes_ : dict route -> column indices
    selectors_ : dict route -> fitted selector
    scores_ : ndarray (n_features,)
        Each column's merit within its own route (NaN outside every route); merits of different
        routes are not comparable.
    ranking_ : ndarray (n_features,)
        Columns by within-route rank, routes interleaved in their given order (a route's best,
        the next route's best, ...).
    """

    def __init__(self, selector=None, routes=None, k_per_route=5):
        self.selector = selector
        self.routes = routes
        self.k_per_route = k_per_route

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _route_k(self, route: str):
        k = self.k_per_route
        if isinstance(k, Mapping):
            if route not in k:
                raise ValueError(f"k_per_route has no entry for route {route!r}")
            k = k[route]
        _check_k(k)
        return k

    def _base(self):
        return ReliefF() if self.selector is None else self.selector

    def _prepare(self, X, y, est):
        Xa, ya = validate_data(est, X, y, dtype=np.float64, order="C", ensure_min_samples=2)
        check_classification_targets(ya)
        routes = _resolve_routes(self.routes, _feature_names(X), Xa.shape[1])
        return Xa, ya, routes

    def _assemble(self, routes, fitted: dict, p: int, classes) -> None:
        self.routes_ = routes
        self.selectors_ = fitted
        scores = np.full(p, np.nan)
        mask = np.zeros(p, dtype=bool)
        within = np.full(p, np.iinfo(np.intp).max, dtype=np.intp)
        route_no = np.full(p, len(routes), dtype=np.intp)
        for i, (r, idx) in enumerate(routes.items()):
            sel = fitted[r]
            scores[idx] = sel.scores_
            mask[idx] = sel.get_support()
            rank = np.empty(idx.size, dtype=np.intp)
            rank[sel.ranking_] = np.arange(idx.size)
            within[idx] = rank
            route_no[idx] = i
        self.scores_ = scores
        self.support_ = mask
        self.ranking_ = np.lexsort((np.arange(p), route_no, within))
        self.classes_ = classes

    def fit(self, X, y):
        Xa, ya, routes = self._prepare(X, y, self)
        fitted = {}
        for r, idx in routes.items():
            sel = clone(self._base()).set_params(k=self._route_k(r))
            fitted[r] = sel.fit(Xa[:, idx], ya)
        self._assemble(routes, fitted, Xa.shape[1], np.unique(ya))
        return self

    def loo_fits(self, X, y) -> Iterator["RouteTopK"]:
        """For each row in turn, this selector fitted on the others (each route's shared path)."""
        tmpl = clone(self)
        Xa, ya, routes = self._prepare(X, y, tmpl)
        n, p = Xa.shape
        its = {}
        for r, idx in routes.items():
            sel = clone(self._base()).set_params(k=self._route_k(r))
            its[r] = iter(loo_fits(sel, Xa[:, idx], ya))
        for q in range(n):
            est = clone(self)
            for attr in ("n_features_in_", "feature_names_in_"):
                if hasattr(tmpl, attr):
                    setattr(est, attr, getattr(tmpl, attr))
            fitted = {r: next(it) for r, it in its.items()}
            est._assemble(routes, fitted, p, np.unique(np.delete(ya, q)))
            yield est

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_

