"""Weka's ReliefF (``ReliefFAttributeEval``) with an exact shared-work leave-one-out path."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np
from scipy.spatial.distance import cdist, pdist, squareform
from sklearn.base import clone

from ._base import _MAX_INT32, _WEKA_EQ, _RankingSelector, _cold_loo, _take_rows

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

