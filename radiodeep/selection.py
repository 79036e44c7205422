"""In-fold feature selection: Weka's ReliefF and symmetric uncertainty as scikit-learn selectors.

Every selector here is a scikit-learn transformer (:class:`~sklearn.feature_selection.SelectorMixin`):
fitted on the training cases of a fold only, it exposes ``scores_`` (one merit per input column),
``ranking_`` (columns best first) and keeps the ``k`` best (``k="all"`` keeps every column).
Ranking is deterministic: equal inputs give equal merits, and ties go to the lowest column index
(``np.argsort(-scores, kind="mergesort")``).

* :class:`ReliefF` follows Weka's ``ReliefFAttributeEval``: k nearest hits and k nearest misses
  from each other class, all instances (default) or ``sample_size`` drawn with Weka's own random
  sequence, numeric differences divided by the feature's range on the training data, distance =
  sum of those differences (L1), misses weighted by class priors (more than two classes), no
  distance weighting (Weka's default).
* :class:`SymmetricUncertainty` follows Weka's ``SymmetricalUncertAttributeEval``: each feature is
  discretised by Fayyad & Irani's recursive MDL method (Weka's ``Discretize`` with the "better
  encoding": log2 of the number of candidate cut points), cut points learned from the training
  data; SU = 2 IG / (H(feature) + H(class)) from the (bin, class) table; no cut gives 0.
* :class:`RouteTopK` ranks every feature route (deep, handcrafted, ...) on its own and unites the
  top ``k_per_route`` of each (the published "best 5 deep + best 5 handcrafted").
* :class:`CorrelationFilter` drops a selected feature correlated above a threshold with a
  better-ranked selected one.

Leave-one-out: ``loo_fits(X, y)`` yields, for every case in turn, the selector fitted on all the
other cases. :class:`ReliefF` computes these by updating the pairwise distances and neighbour
sums of the full data (only the rows and the columns whose range changes when a case leaves are
recomputed); the result of every fold is *bit for bit* the cold refit's, because all distances and
difference sums are computed in exact integer arithmetic: each range-normalised value is
quantised to a multiple of 2**-bits, ``bits = min(40, 52 - bit_length(n_features))`` (39 for
5,096 features, 38 for 10,000), so that every row sum stays an exact float64 integer. That is a
resolution of a few 1e-12 of the feature's range, below the float rounding Weka's own sums incur;
the merits agree with a plain float computation to about 1e-12.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from scipy.spatial.distance import cdist, pdist, squareform
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = [
    "ReliefF",
    "SymmetricUncertainty",
    "RouteTopK",
    "CorrelationFilter",
    "build_selector",
    "loo_fits",
    "mdl_cut_points",
]

# Weka's Utils.eq tolerance: a feature whose training range is below this is constant.
_WEKA_EQ = 1e-6
_MAX_INT32 = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- shared base
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


# --------------------------------------------------------------------------- ReliefF core
def _quant_bits(p: int) -> int:
    """Fractional bits of the quantised normalised values: row sums stay exact below 2**52."""
    return int(min(40, 52 - int(p).bit_length()))


def _quantise(X: np.ndarray, mins: np.ndarray, maxs: np.ndarray, bits: int) -> np.ndarray:
    """Range-normalised values as integers (in float64): rint((x - min) / (max - min) * 2**bits).

    A column whose range is below Weka's tolerance (1e-6) is constant: all zeros, as Weka's
    ``norm`` returns 0 there. Computed element by element, so a column gives the same numbers
    whichever other rows or columns come with it.
    """
    rng = maxs - mins
    const = rng < _WEKA_EQ
    Z = np.rint((X - mins) / np.where(const, 1.0, rng) * float(2.0 ** bits))
    if const.any():
        Z[:, const] = 0.0
    return Z


def _java_random_indices(seed: int, count: int, n: int) -> np.ndarray:
    """``abs(new java.util.Random(seed).nextInt() % n)``, ``count`` times (Weka's sampling)."""
    mult, mask = 0x5DEECE66D, (1 << 48) - 1
    state = (int(seed) ^ mult) & mask
    out = np.empty(count, dtype=np.intp)
    for i in range(count):
        state = (state * mult + 0xB) & mask
        r = state >> 16
        if r >= 1 << 31:
            r -= 1 << 32
        out[i] = abs(r) % n
    return out


def _weka_seed(random_state) -> int:
    """Weka's default seed is 1; an int is used as the Java seed."""
    if random_state is None:
        return 1
    if isinstance(random_state, (numbers.Integral, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(_MAX_INT32))
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {random_state!r}")


def _neighbour_pairs(D: np.ndarray, rows: np.ndarray, y: np.ndarray, n_classes: int, k: int):
    """Nearest hits and misses of each query row.

    ``D[r, j]`` is the distance from training row ``rows[r]`` to training row ``j``. For every
    query row and class, the ``k`` nearest rows of that class other than itself, nearest first,
    ties to the lower row index (a stable sort). Returns, one entry per pair: the query position
    ``r``, the neighbour row ``j`` and the pair's group key ``g * (k + 1) + stored``, where
    ``stored`` is how many neighbours of that class the query row has (Weka divides each
    neighbour's differences by it) and ``g`` is 0 for a hit and 1 for a miss with two classes,
    ``class_i * C + class_j`` with more. Pairs of one key share their coefficient.
    """
    r_n, n = D.shape
    Dm = np.array(D, dtype=np.float64, copy=True)
    ar = np.arange(r_n)
    Dm[ar, rows] = np.inf
    order = np.argsort(Dm, axis=1, kind="stable")
    yo = y[order]
    not_self = order != rows[:, None]
    counts = np.bincount(y, minlength=n_classes)
    yi = y[rows]
    R, J, K = [], [], []
    for c in range(n_classes):
        m = (yo == c) & not_self
        take = m & (np.cumsum(m, axis=1) <= k)
        ri, pos = np.nonzero(take)
        if ri.size == 0:
            continue
        stored = np.minimum(k, counts[c] - (yi == c))
        R.append(ri)
        J.append(order[ri, pos])
        if n_classes == 2:  # hits and misses: the coefficient depends on nothing else
            grp = (yi[ri] != c).astype(np.intp)
        else:
            grp = yi[ri] * n_classes + c
        K.append(grp * (k + 1) + stored[ri])
    if not R:
        e = np.zeros(0, dtype=np.intp)
        return e, e, e
    return (np.concatenate(R).astype(np.intp), np.concatenate(J).astype(np.intp),
            np.concatenate(K).astype(np.intp))


def _pair_sums(Zi: np.ndarray, I: np.ndarray, J: np.ndarray, mult: np.ndarray | None = None,
               cols: np.ndarray | None = None) -> np.ndarray:
    """Exact integer sum over pairs of |Zi[i] - Zi[j]| (times ``mult``), per column."""
    p = Zi.shape[1] if cols is None else len(cols)
    out = np.zeros(p, dtype=np.int64)
    if I.size == 0 or p == 0:
        return out
    step = max(1, (1 << 21) // max(p, 1))
    src = Zi if cols is None else Zi[:, cols]
    for s in range(0, I.size, step):
        a = src[I[s:s + step]]
        a -= src[J[s:s + step]]
        np.abs(a, out=a)
        if mult is not None:
            a *= mult[s:s + step, None]
        out += a.sum(axis=0)
    return out


def _group_sums(Zi, I, J, keys, mult=None, cols=None) -> dict[int, np.ndarray]:
    """Per key, the exact integer sum over its pairs of |Zi[i] - Zi[j]| (per column).

    A pair met in both directions within one key (mutual neighbours) is computed once, doubled.
    """
    out: dict[int, np.ndarray] = {}
    if keys.size == 0:
        return out
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], ks.size]
    n = int(max(I.max(), J.max())) + 1
    for s, e in zip(starts, ends):
        idx = order[s:e]
        if mult is not None:
            out[int(ks[s])] = _pair_sums(Zi, I[idx], J[idx], mult[idx], cols)
            continue
        lo = np.minimum(I[idx], J[idx])
        hi = np.maximum(I[idx], J[idx])
        codes, counts = np.unique(lo * n + hi, return_counts=True)
        a, b = np.divmod(codes, n)
        one, two = counts == 1, counts == 2
        acc = _pair_sums(Zi, a[one], b[one], None, cols)
        if two.any():
            acc += 2 * _pair_sums(Zi, a[two], b[two], None, cols)
        out[int(ks[s])] = acc
    return out


def _coefficient(key: int, n_classes: int, k: int, priors: np.ndarray) -> float:
    stored = key % (k + 1)
    grp = key // (k + 1)
    if n_classes == 2:
        return (1.0 if grp else -1.0) / stored
    ci, cj = divmod(grp, n_classes)
    if ci == cj:
        return -1.0 / stored
    return priors[cj] / (1.0 - priors[ci]) / stored


def _combine(sums: dict[int, np.ndarray], p: int, n_classes: int, k: int, priors: np.ndarray,
             m: int, bits: int) -> np.ndarray:
    """Weka's weights from the exact per-group sums; a fixed order, so equal sums give equal bits."""
    total = np.zeros(p, dtype=np.float64)
    for key in sorted(sums):
        total += _coefficient(key, n_classes, k, priors) * sums[key].astype(np.float64)
    return total * float(2.0 ** -bits) / float(m)


def _relieff_scores(X: np.ndarray, y: np.ndarray, n_classes: int, k: int,
                    sample: np.ndarray | None = None) -> np.ndarray:
    """Weka ReliefF merits (nominal class), all rows or the sampled rows ``sample``."""
    n, p = X.shape
    bits = _quant_bits(p)
    Z = _quantise(X, X.min(axis=0), X.max(axis=0), bits)
    counts = np.bincount(y, minlength=n_classes)
    priors = counts / n
    if sample is None:
        rows, mult, m = np.arange(n), None, n
        D = squareform(pdist(Z, "cityblock"))
    else:
        rows, mult_rows = np.unique(sample, return_counts=True)
        m = len(sample)
        D = cdist(Z[rows], Z, "cityblock")
    R, J, keys = _neighbour_pairs(D, rows, y, n_classes, k)
    mult = None if sample is None else mult_rows[R].astype(np.int64)
    Zi = Z.astype(np.int64)
    sums = _group_sums(Zi, rows[R], J, keys, mult)
    return _combine(sums, p, n_classes, k, priors, m, bits)


def _relieff_loo(X: np.ndarray, y: np.ndarray, n_classes: int, k: int) -> Iterator[np.ndarray | None]:
    """ReliefF merits (all instances) with each row left out in turn, equal to cold refits.

    What leaving row q out changes: the class counts; the range of a feature only where q held
    its sole minimum or maximum (those columns are re-normalised); the distances between the other
    rows only through those columns; the neighbour lists only of rows that had q (or a changed
    distance) among them. The full data's distance matrix and per-group difference sums are
    updated by exactly these changes, in integers, so every fold equals its cold refit.
    Yields ``None`` for a fold in which a class disappears (the caller refits that one cold).
    """
    n, p = X.shape
    bits = _quant_bits(p)
    mins, maxs = X.min(axis=0), X.max(axis=0)
    is_min, is_max = X == mins, X == maxs
    sole_min = is_min & (is_min.sum(axis=0) == 1)
    sole_max = is_max & (is_max.sum(axis=0) == 1)
    next_min = np.where(is_min, np.inf, X).min(axis=0)
    next_max = np.where(is_max, -np.inf, X).max(axis=0)
    Z = _quantise(X, mins, maxs, bits)
    Zi = Z.astype(np.int64)
    D = squareform(pdist(Z, "cityblock"))
    rows = np.arange(n)
    R, J, keys = _neighbour_pairs(D, rows, y, n_classes, k)
    ref_codes = (keys * n + R) * n + J
    ref_sums = _group_sums(Zi, R, J, keys)
    for q in range(n):
        keep = np.delete(rows, q)
        yq = y[keep]
        counts = np.bincount(yq, minlength=n_classes)
        if (counts == 0).any():
            yield None
            continue
        ch = np.flatnonzero(sole_min[q] | sole_max[q])
        Dq = D[np.ix_(keep, keep)]
        if ch.size:
            mins_c = np.where(sole_min[q, ch], next_min[ch], mins[ch])
            maxs_c = np.where(sole_max[q, ch], next_max[ch], maxs[ch])
            Zc_new = _quantise(X[np.ix_(keep, ch)], mins_c, maxs_c, bits)
            Zc_old = Z[np.ix_(keep, ch)]
            Dq -= squareform(pdist(Zc_old, "cityblock"))
            Dq += squareform(pdist(Zc_new, "cityblock"))
        Rq, Jq, kq = _neighbour_pairs(Dq, np.arange(n - 1), yq, n_classes, k)
        Io, Jo = keep[Rq], keep[Jq]
        codes = (kq * n + Io) * n + Jo
        removed = np.setdiff1d(ref_codes, codes, assume_unique=True)
        added = np.setdiff1d(codes, ref_codes, assume_unique=True)
        sums = {key: v.copy() for key, v in ref_sums.items()}
        for sign, chg in ((-1, removed), (1, added)):
            if chg.size == 0:
                continue
            ck, rest = np.divmod(chg, n * n)
            ci, cj = np.divmod(rest, n)
            for key, v in _group_sums(Zi, ci, cj, ck).items():
                if key in sums:
                    sums[key] += sign * v
                else:
                    sums[key] = sign * v
        present = np.unique(kq)
        sums = {int(key): sums[int(key)] for key in present}
        if ch.size:
            Zci = Zc_new.astype(np.int64)
            for key, v in _group_sums(Zci, Rq, Jq, kq).items():
                sums[key][ch] = v
        yield _combine(sums, p, n_classes, k, counts / (n - 1), n - 1, bits)


def _check_pos_int(name: str, v, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {v!r}")


class ReliefF(_RankingSelector):
    """Weka's ReliefF attribute evaluator as a scikit-learn selector.

    Parameters
    ----------
    k : int or "all", default 10
        Number of features kept (the ``k`` best ``scores_``).
    n_neighbors : int, default 10
        Nearest hits, and nearest misses from each other class (Weka ``-K``).
    sample_size : int or None, default None
        Instances sampled with replacement (Weka ``-M``); None, or at least the number of
        training cases, uses every instance once (Weka's default).
    random_state : int, RandomState or None, default None
        Seed of the sampling (Weka ``-D``); the draws follow ``java.util.Random`` as Weka's do.
        None is Weka's default seed, 1: ReliefF is always deterministic.

    Attributes
    ----------
    scores_ : ndarray (n_features,)
        ReliefF merits, in [-1, 1].
    ranking_ : ndarray (n_features,)
        Column indices, best first (ties to the lowest index).

    Notes
    -----
    Neighbour ties are broken by the lower row index (Weka keeps whichever it met first in a
    running list, which can differ in exact ties). Distances use range-normalised values
    quantised to ``2**-bits`` (``bits`` <= 40); see the module docstring.
    """

    def __init__(self, k=10, n_neighbors=10, sample_size=None, random_state=None):
        self.k = k
        self.n_neighbors = n_neighbors
        self.sample_size = sample_size
        self.random_state = random_state

    def _sample(self, n: int) -> np.ndarray | None:
        m = self.sample_size
        if m is None or m >= n:
            return None
        return _java_random_indices(_weka_seed(self.random_state), m, n)

    def _scores(self, X, y, n_classes):
        _check_pos_int("n_neighbors", self.n_neighbors)
        _check_pos_int("sample_size", self.sample_size, allow_none=True)
        return _relieff_scores(X, y, n_classes, int(self.n_neighbors), self._sample(X.shape[0]))

    def loo_fits(self, X, y) -> Iterator["ReliefF"]:
        """For each row of ``X`` in turn, this selector fitted on all the other rows.

        Equal, bit for bit, to ``clone(self).fit(X without row q, y without row q)``; with every
        instance used (the default) it shares the pairwise work between the folds.
        """
        tmpl = clone(self)
        Xa, y_enc, classes = self._validate_fit(X, y, est=tmpl)
        _check_pos_int("n_neighbors", self.n_neighbors)
        _check_pos_int("sample_size", self.sample_size, allow_none=True)
        n = Xa.shape[0]
        if n < 3:
            raise ValueError(f"leave-one-out needs at least 3 cases, got {n}")
        if self.sample_size is not None and self.sample_size < n - 1:
            yield from _cold_loo(self, X, y)
            return
        k = int(self.n_neighbors)
        for q, scores in enumerate(_relieff_loo(Xa, y_enc, len(classes), k)):
            if scores is None:
                keep = np.delete(np.arange(n), q)
                yield clone(self).fit(_take_rows(X, keep), _take_rows(y, keep))
                continue
            keep_classes = classes[np.unique(np.delete(y_enc, q))]
            yield self._fitted_copy(scores, keep_classes, tmpl)


# --------------------------------------------------------------------------- MDL + SU core
def _xlogx(x: np.ndarray) -> np.ndarray:
    """Weka's lnFunc: x * ln(x), 0 for x <= 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


_LN2 = float(np.log(2.0))


def _entropy_rows(counts: np.ndarray) -> np.ndarray:
    """Weka ContingencyTables.entropy of each row of ``counts`` (bits)."""
    counts = np.asarray(counts, dtype=np.float64)
    rv = np.zeros(counts.shape[0])
    for c in range(counts.shape[1]):
        rv = rv - _xlogx(counts[:, c])
    tot = counts.sum(axis=1)
    out = np.zeros_like(rv)
    ok = ~(np.abs(tot) < _WEKA_EQ)
    out[ok] = (rv[ok] + _xlogx(tot[ok])) / (tot[ok] * _LN2)
    return out


def _mdl_sorted(Xs: np.ndarray, Ys: np.ndarray, n_classes: int):
    """Fayyad & Irani MDL cut positions (Weka, better encoding) of row-sorted data.

    Feature-major: ``Xs[f]`` holds feature f's values sorted ascending, ``Ys[f]`` the class codes
    in that order. Returns the (feature, position) of every accepted cut, a cut at position i
    lying between sorted values i and i + 1. All features are processed together, one recursion
    level at a time (the first level, every feature whole, without any gathering).
    """
    p, n = Xs.shape
    C = n_classes
    xlx = _xlogx(np.arange(n + 1, dtype=np.float64))  # x ln x of every possible count
    # cumulative counts of the first C - 1 classes (the last one is what remains)
    cum = np.zeros((max(C - 1, 1), p, n + 1), dtype=np.int32)
    for c in range(C - 1):
        np.cumsum(Ys == c, axis=1, out=cum[c, :, 1:])
    bnd = Xs[:, 1:] > Xs[:, :-1]  # a cut may lie between sorted values i and i + 1
    cb = np.zeros((p, n), dtype=np.int32)  # boundaries at positions < i
    np.cumsum(bnd, axis=1, out=cb[:, 1:])

    cut_f, cut_pos = [], []
    res = _best_cuts_whole(cum, bnd, cb, xlx, C) if n >= 2 else None
    if res is None:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    f, a, b, pos = res
    cut_f.append(f)
    cut_pos.append(pos)
    segF, segA, segB = np.r_[f, f], np.r_[a, pos + 1], np.r_[pos + 1, b]
    budget = 1 << 21
    while segF.size:
        ok = ((segB - segA) >= 2) & ((cb[segF, segB - 1] - cb[segF, segA]) > 0)
        segF, segA, segB = segF[ok], segA[ok], segB[ok]
        if segF.size == 0:
            break
        ncand = segB - segA - 1
        csum = np.cumsum(ncand)
        nF, nA, nB = [], [], []
        lo = 0
        while lo < segF.size:
            base = int(csum[lo - 1]) if lo else 0
            hi = max(int(np.searchsorted(csum, base + budget, side="right")), lo + 1)
            res = _best_cuts(segF[lo:hi], segA[lo:hi], segB[lo:hi], ncand[lo:hi], cum, bnd, cb,
                             xlx, C)
            lo = hi
            if res is None:
                continue
            f, a, b, pos = res
            cut_f.append(f)
            cut_pos.append(pos)
            nF += [f, f]
            nA += [a, pos + 1]
            nB += [pos + 1, b]
        if not nF:
            break
        segF, segA, segB = np.concatenate(nF), np.concatenate(nA), np.concatenate(nB)
    return np.concatenate(cut_f), np.concatenate(cut_pos)


def _mdl_accept(F, A, B, bpos, best_e, left, tot, cb, C):
    """Weka's FayyadAndIranisMDL test of each segment's best cut (better encoding)."""
    lc = left.astype(np.float64)
    tc = tot.astype(np.float64)
    rc = tc - lc
    N = (B - A).astype(np.float64)
    prior_e = _entropy_rows(tc)
    gain = prior_e - best_e
    k_all = (tc > 0).sum(axis=1)
    k_left = (lc > 0).sum(axis=1)
    k_right = (rc > 0).sum(axis=1)
    e_left = _entropy_rows(lc)
    e_right = _entropy_rows(rc)
    n_cuts = (cb[F, B - 1] - cb[F, A]).astype(np.float64)
    delta = (np.log(np.power(3.0, k_all) - 2) / _LN2
             - ((k_all * prior_e) - (k_right * e_right) - (k_left * e_left)))
    return (gain > 0) & (gain > (np.log(n_cuts) / _LN2 + delta) / N)


def _class_counts(first: list, total):
    """Append the last class's counts: ``total`` minus the others (exact integers)."""
    if len(first) == 0:
        return [total]
    rest = total - first[0]
    for a in first[1:]:
        rest = rest - a
    return first + [rest]


def _best_cuts_whole(cum, bnd, cb, xlx, C):
    """The first recursion level: every feature's whole sorted column is one segment."""
    p = cum.shape[1]
    n = cum.shape[2] - 1
    nL = np.arange(1, n, dtype=np.int32)
    nR = n - nL
    left = _class_counts([cum[c, :, 1:n] for c in range(C - 1)], nL[None, :])
    tot = np.stack(_class_counts([cum[c, :, n] for c in range(C - 1)], np.full(p, n, np.int32)),
                   axis=1)
    rv = np.zeros((p, n - 1))
    for c in range(C):
        rv += xlx[left[c]]
    rv -= xlx[nL]
    for c in range(C):
        rv += xlx[tot[:, c][:, None] - left[c]]
    rv -= xlx[nR]
    rv *= -1.0 / (float(n) * _LN2)
    E = rv
    E[~bnd] = np.inf
    bi = np.argmin(E, axis=1)  # first minimum, as Weka's strict '<' scan
    F = np.arange(p)
    best_e = E[F, bi]
    prior = _entropy_rows(tot)
    cand = np.flatnonzero(best_e < prior)
    if cand.size == 0:
        return None
    bpos = bi[cand]
    lc = np.stack([np.broadcast_to(left[c], (p, n - 1))[cand, bpos] for c in range(C)], axis=1)
    A = np.zeros(cand.size, dtype=np.intp)
    B = np.full(cand.size, n, dtype=np.intp)
    acc = _mdl_accept(cand, A, B, bpos, best_e[cand], lc, tot[cand], cb, C)
    if not acc.any():
        return None
    return cand[acc], A[acc], B[acc], bpos[acc]


def _best_cuts(F, A, B, ncand, cum, bnd, cb, xlx, C):
    """For a batch of segments: the accepted best cut of each (Weka's cutPointsForSubset)."""
    S = F.size
    starts = np.cumsum(ncand) - ncand
    total = int(ncand.sum())
    seg = np.repeat(np.arange(S), ncand)
    pos = A[seg] + (np.arange(total) - starts[seg])
    f = F[seg]
    valid = bnd[f, pos]
    N = (B - A).astype(np.float64)
    # entropyConditionedOnRows over rows (left, right), Weka's summation order
    nL = pos + 1 - A[seg]
    nR = B[seg] - pos - 1
    Aseg = A[seg]
    left = _class_counts([cum[c, f, pos + 1] - cum[c, f, Aseg] for c in range(C - 1)], nL)
    tot = np.stack(_class_counts([cum[c, F, B] - cum[c, F, A] for c in range(C - 1)], B - A),
                   axis=1)
    rv = np.zeros(total)
    for c in range(C):
        rv = rv + xlx[left[c]]
    rv = rv - xlx[nL]
    for c in range(C):
        rv = rv + xlx[tot[seg, c] - left[c]]
    rv = rv - xlx[nR]
    E = -rv / (N[seg] * _LN2)
    E = np.where(valid, E, np.inf)
    segmin = np.minimum.reduceat(E, starts)
    prior = _entropy_rows(tot)
    hit = (E == segmin[seg]) & (segmin[seg] < prior[seg])
    if not hit.any():
        return None
    s_idx, first = np.unique(seg[hit], return_index=True)
    bi = np.flatnonzero(hit)[first]
    lc = np.stack([left[c][bi] for c in range(C)], axis=1)
    acc = _mdl_accept(F[s_idx], A[s_idx], B[s_idx], pos[bi], E[bi], lc, tot[s_idx], cb, C)
    if not acc.any():
        return None
    s_acc = s_idx[acc]
    return F[s_acc], A[s_acc], B[s_acc], pos[bi][acc]


def _su_from_sorted(Xs: np.ndarray, Ys: np.ndarray, n_classes: int):
    """SU of every feature and its MDL cut points, from feature-major sorted data."""
    p, n = Xs.shape
    C = n_classes
    cf, cp = _mdl_sorted(Xs, Ys, C)
    order = np.lexsort((cp, cf))
    cf, cp = cf[order], cp[order]
    values = (Xs[cf, cp] + Xs[cf, cp + 1]) / 2.0
    ncut = np.bincount(cf, minlength=p)
    ends = np.cumsum(ncut)
    edges = [values[e - c:e] for c, e in zip(ncut.tolist(), ends.tolist())]
    scores = np.zeros(p)
    if cf.size:
        has = np.flatnonzero(ncut)  # features without a cut score 0 (a single bin)
        row = np.full(p, -1, dtype=np.intp)
        row[has] = np.arange(has.size)
        mark = np.zeros((has.size, n), dtype=np.int32)
        mark[row[cf], cp + 1] = 1
        bins = np.cumsum(mark, axis=1)
        nb = int(ncut.max()) + 1
        h = has.size
        idx = (np.arange(h)[:, None] * nb + bins) * C + Ys[has]
        table = np.bincount(idx.ravel(), minlength=h * nb * C).reshape(h, nb, C).astype(np.float64)
        # Weka ContingencyTables.symmetricalUncertainty: rows = bins, columns = classes
        colsum = table.sum(axis=1)
        total = colsum.sum(axis=1)
        col_e = np.zeros(h)
        for c in range(C):
            col_e = col_e + _xlogx(colsum[:, c])
        col_e = col_e - _xlogx(total)
        row_e = np.zeros(h)
        cond = np.zeros(h)
        for b in range(nb):
            rowsum = np.zeros(h)
            for c in range(C):
                rowsum = rowsum + table[:, b, c]
                cond = cond + _xlogx(table[:, b, c])
            row_e = row_e + _xlogx(rowsum)
        cond = cond - row_e
        row_e = row_e - _xlogx(total)
        ig = col_e - cond
        zero = (np.abs(col_e) < _WEKA_EQ) | (np.abs(row_e) < _WEKA_EQ)
        with np.errstate(invalid="ignore", divide="ignore"):
            su = 2.0 * (ig / (col_e + row_e))
        scores[has] = np.where(zero, 0.0, su)
    return scores, edges


def _sorted_columns(X: np.ndarray, y: np.ndarray):
    """Feature-major sorted values, their class codes and the sorting order (stable)."""
    XT = np.ascontiguousarray(X.T)
    order = np.argsort(XT, axis=1, kind="stable")
    return np.take_along_axis(XT, order, axis=1), y[order], order


def mdl_cut_points(X, y) -> list[np.ndarray]:
    """Weka's supervised MDL discretisation (Fayyad & Irani, better encoding) of every column.

    Returns one ascending array of cut points per column (empty: the column stays one bin).
    A value ``v`` falls in bin ``np.searchsorted(cuts, v, side="left")``, i.e. bins are
    (-inf, c0], (c0, c1], ... as in Weka.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    _, y_enc = np.unique(np.asarray(y), return_inverse=True)
    y_enc = y_enc.astype(np.intp)
    Xs, Ys, _ = _sorted_columns(X, y_enc)
    return _su_from_sorted(Xs, Ys, int(y_enc.max()) + 1 if y_enc.size else 1)[1]


class SymmetricUncertainty(_RankingSelector):
    """Weka's symmetrical uncertainty attribute evaluator as a scikit-learn selector.

    Each column is discretised by Fayyad & Irani's MDL method as Weka does it (``Discretize``
    with the better encoding, the setting Weka's SU evaluator uses), with cut points learned from
    the training data only; SU = 2 * IG / (H(feature) + H(class)) from the (bin, class) table.
    A column with no accepted cut scores 0.

    Attributes
    ----------
    scores_ : ndarray (n_features,)
        SU merits, in [0, 1].
    bin_edges_ : list of ndarray
        The MDL cut points of each column (ascending; empty where no cut was accepted).
    ranking_ : ndarray (n_features,)
        Column indices, best first (ties to the lowest index).
    """

    def __init__(self, k=10):
        self.k = k

    def fit(self, X, y):
        X, y_enc, classes = self._validate_fit(X, y)
        Xs, Ys, _ = _sorted_columns(X, y_enc)
        scores, edges = _su_from_sorted(Xs, Ys, len(classes))
        self._set_fitted(scores, classes)
        self.bin_edges_ = edges
        return self

    def loo_fits(self, X, y) -> Iterator["SymmetricUncertainty"]:
        """For each row in turn, this selector fitted on the others (equal to cold refits).

        The column sort of the full data is shared: dropping a row from a stably sorted column
        gives the stable sort of the remaining rows.
        """
        tmpl = clone(self)
        Xa, y_enc, classes = self._validate_fit(X, y, est=tmpl)
        n, p = Xa.shape
        if n < 3:
            raise ValueError(f"leave-one-out needs at least 3 cases, got {n}")
        Xs_full, _, order = _sorted_columns(Xa, y_enc)
        for q in range(n):
            keep = np.delete(np.arange(n), q)
            yq = y_enc[keep]
            present = np.unique(yq)
            if present.size != len(classes):
                yield clone(self).fit(_take_rows(X, keep), _take_rows(y, keep))
                continue
            # dropping row q from each stably sorted column gives the stable sort of the rest
            mask = order != q
            oq = order[mask].reshape(p, n - 1)
            Xs = Xs_full[mask].reshape(p, n - 1)
            Ys = y_enc[oq]
            scores, edges = _su_from_sorted(Xs, Ys, len(classes))
            est = self._fitted_copy(scores, classes, tmpl)
            est.bin_edges_ = edges
            yield est


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


# --------------------------------------------------------------------------- routes
def _feature_names(X) -> np.ndarray | None:
    cols = getattr(X, "columns", None)
    if cols is None:
        return None
    return np.asarray([str(c) for c in cols], dtype=object)


def _resolve_routes(routes, names: np.ndarray | None, p: int) -> dict[str, np.ndarray]:
    """Route name -> column indices, from names, indices, or the 'route:' prefix of names."""
    if routes is None:
        if names is None:
            raise ValueError("RouteTopK without routes needs feature names like 'deep:...' (a DataFrame)")
        prefixes = [str(c).split(":", 1)[0] if ":" in str(c) else None for c in names]
        if any(pr is None for pr in prefixes):
            bad = [c for c, pr in zip(names, prefixes) if pr is None][:3]
            raise ValueError(f"RouteTopK without routes needs every feature named 'route:...'; got {bad}")
        out: dict[str, list[int]] = {}
        for i, pr in enumerate(prefixes):
            out.setdefault(pr, []).append(i)
        return {r: np.asarray(v, dtype=np.intp) for r, v in out.items()}
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
        Columns as names (``X`` a DataFrame) or integer positions. None: routes are read from
        feature names of the form ``"route:feature"``. Columns in no route are never selected.
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


# --------------------------------------------------------------------------- from the config
def build_selector(select_cfg, routes: Mapping[str, Sequence[str]], seed: int):
    """The selector an experiment's ``select`` section describes (None for ``method: none``).

    ``routes`` maps each of the experiment's routes to its column names in the ``X`` the
    selector will see. ``k_per_route`` gives a :class:`RouteTopK`; ``k`` ranks all those columns
    together; ``correlation_threshold`` wraps the result in a :class:`CorrelationFilter`.
    """
    method = select_cfg.method
    if method == "none":
        return None
    if method == "relieff":
        base = ReliefF(k=10, n_neighbors=select_cfg.neighbours, sample_size=select_cfg.sample,
                       random_state=int(seed))
    elif method == "su":
        base = SymmetricUncertainty(k=10)
    else:
        raise ValueError(f"unknown selection method {method!r}")
    if select_cfg.k_per_route is not None:
        sel = RouteTopK(base, routes={str(r): list(c) for r, c in routes.items()},
                        k_per_route=int(select_cfg.k_per_route))
    else:
        k = select_cfg.k if select_cfg.k is not None else "all"
        sel = base.set_params(k=k)
    if select_cfg.correlation_threshold is not None:
        sel = CorrelationFilter(sel, threshold=float(select_cfg.correlation_threshold))
    return sel
