"""Weka's symmetrical uncertainty (``SymmetricalUncertAttributeEval``) with MDL discretisation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.base import clone

from ._base import _WEKA_EQ, _RankingSelector, _take_rows

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

