"""Statistics of the evaluation: AUC with DeLong's variance, Wilson intervals, binary metrics.

* :func:`delong_ci` / :func:`delong_test`: the AUC (Mann-Whitney, ties count one half) and its
  variance by DeLong, DeLong & Clarke-Pearson (1988), computed with midranks as in Sun & Xu
  (2014); the interval is AUC +- z * SE clipped to [0, 1] (as pROC's ``ci.auc``), the test of two
  correlated AUCs on the same cases is the usual z test.
* :func:`wilson_ci`: Wilson's score interval of a proportion.
* :func:`binary_metrics`: AUC, accuracy, balanced accuracy, sensitivity, specificity, the
  confusion matrix, with their intervals.

Repeated cross-validation scores each case once per repeat. ``groups`` (the case id of every
row) then says which rows are the same case: the AUC is still the pooled AUC of all rows (the
area under the pooled ROC curve), but its variance averages each case's DeLong placement values
over its repeats before taking their variance over cases (DeLong with clustered data, as in
Obuchowski 1997), so that repeating a case R times does not shrink the interval; the Wilson
intervals likewise use the number of cases (counts divided by R). With one row per case (LOO,
external test) ``groups`` changes nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

__all__ = ["delong_ci", "delong_test", "delong_variance", "wilson_ci", "binary_metrics"]


def _split(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if y.ndim != 1 or s.shape[1] != y.shape[0]:
        raise ValueError(f"y_true ({y.shape}) and scores ({s.shape}) do not match")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    vals = np.unique(y)
    if not np.isin(vals, [0, 1]).all() and not np.isin(vals, [False, True]).all():
        raise ValueError(f"y_true must hold 0/1 labels, got {vals[:5].tolist()}")
    pos = y.astype(bool)
    if pos.all() or not pos.any():
        raise ValueError("the AUC needs both classes among the cases")
    return s[:, pos], s[:, ~pos]


def _structural(y_true, scores):
    """AUCs and DeLong's structural components (Sun & Xu's midrank algorithm)."""
    X, Y = _split(y_true, scores)  # positives, negatives; (k, m), (k, n)
    m, n = X.shape[1], Y.shape[1]
    tx = np.apply_along_axis(rankdata, 1, X)
    ty = np.apply_along_axis(rankdata, 1, Y)
    tz = np.apply_along_axis(rankdata, 1, np.concatenate([X, Y], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n  # each positive: share of negatives scored below it
    v01 = 1.0 - (tz[:, m:] - ty) / m  # each negative: share of positives scored above it
    return aucs, v10, v01, m, n


def _by_case(v: np.ndarray, groups) -> np.ndarray:
    """Placement values (k, rows) averaged per case (k, cases); rows unchanged without groups."""
    if groups is None:
        return v
    codes, uniq = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    sums = np.zeros((v.shape[0], len(uniq)))
    np.add.at(sums.T, codes, v.T)
    return sums / np.bincount(codes, minlength=len(uniq))


def _split_groups(y_true, groups):
    if groups is None:
        return None, None
    g = np.asarray(groups, dtype=object)
    pos = np.asarray(y_true).astype(bool)
    if g.shape[0] != pos.shape[0]:
        raise ValueError(f"groups ({g.shape}) and y_true ({pos.shape}) do not match")
    return g[pos], g[~pos]


def _cov(v: np.ndarray) -> np.ndarray:
    k, size = v.shape
    if size < 2:
        return np.full((k, k), np.nan)
    return np.atleast_2d(np.cov(v, ddof=1))


def _variance_matrix(y_true, scores, groups) -> tuple[np.ndarray, np.ndarray]:
    aucs, v10, v01, _, _ = _structural(y_true, scores)
    gp, gn = _split_groups(y_true, groups)
    v10, v01 = _by_case(v10, gp), _by_case(v01, gn)
    return aucs, _cov(v10) / v10.shape[1] + _cov(v01) / v01.shape[1]


def delong_variance(y_true, scores, groups=None) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC); ``groups``: case id of each row (repeated rows)."""
    aucs, S = _variance_matrix(y_true, scores, groups)
    return float(aucs[0]), float(S[0, 0])


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2.0))


def delong_ci(y_true, scores, level: float = 0.95, groups=None) -> tuple[float, float, float]:
    """(AUC, low, high): AUC +- z * DeLong SE, clipped to [0, 1] (NaN bounds with < 2 per class)."""
    auc, var = delong_variance(y_true, scores, groups)
    if not np.isfinite(var):
        return auc, float("nan"), float("nan")
    half = _z(level) * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def delong_test(y_true, scores_a, scores_b, groups=None) -> dict:
    """DeLong's test of two correlated AUCs on the same cases (two-sided).

    Returns ``auc_a``, ``auc_b``, ``diff`` (a - b), ``z`` and ``p``. Rows are paired: row i of
    both holds the same case (and repeat); ``groups`` gives each row's case id.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} differ in shape")
    aucs, S = _variance_matrix(y_true, np.vstack([a, b]), groups)
    var = S[0, 0] + S[1, 1] - 2.0 * S[0, 1]
    diff = float(aucs[0] - aucs[1])
    if not np.isfinite(var):
        z, p = float("nan"), float("nan")
    elif var <= 1e-300:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "z": float(z), "p": p}


def wilson_ci(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of ``successes / n`` (NaNs for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    z = _z(level)
    phat = successes / n
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(phat * (1.0 - phat) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binary_metrics(y_true, scores, y_pred, level: float = 0.95, groups=None) -> dict:
    """Every metric of one set of out-of-sample predictions (labels 0/1, positive = 1).

    One definition whatever the scheme: the counts ``tn, fp, fn, tp`` are over all rows (a case
    scored in R repeats counts R times), accuracy, sensitivity and specificity are ratios of
    those counts, the AUC is the pooled AUC of all rows. ``groups`` (each row's case id) makes
    the intervals count cases, not rows (see the module docs); ``n``/``n_pos`` are cases,
    ``repeats`` the rows per case.
    """
    y = np.asarray(y_true).astype(int)
    yp = np.asarray(y_pred).astype(int)
    tp = int(((y == 1) & (yp == 1)).sum())
    tn = int(((y == 0) & (yp == 0)).sum())
    fp = int(((y == 0) & (yp == 1)).sum())
    fn = int(((y == 1) & (yp == 0)).sum())
    n_cases = len(y) if groups is None else len(pd.unique(np.asarray(groups, dtype=object)))
    if n_cases and len(y) % n_cases:
        raise ValueError("every case must be scored the same number of times")
    r = len(y) // n_cases if n_cases else 1
    out: dict = {}
    try:
        auc, lo, hi = delong_ci(y, scores, level, groups=groups)
    except ValueError:
        auc = lo = hi = float("nan")
    out["auc"], out["auc_ci_low"], out["auc_ci_high"] = auc, lo, hi
    n, n_pos, n_neg = tp + tn + fp + fn, tp + fn, tn + fp
    out["accuracy"] = (tp + tn) / n if n else float("nan")
    out["accuracy_ci_low"], out["accuracy_ci_high"] = wilson_ci((tp + tn) / r, n / r, level)
    sens = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    out["balanced_accuracy"] = (sens + spec) / 2.0
    out["sensitivity"] = sens
    out["sensitivity_ci_low"], out["sensitivity_ci_high"] = wilson_ci(tp / r, n_pos / r, level)
    out["specificity"] = spec
    out["specificity_ci_low"], out["specificity_ci_high"] = wilson_ci(tn / r, n_neg / r, level)
    out["ppv"] = tp / (tp + fp) if tp + fp else float("nan")
    out["npv"] = tn / (tn + fn) if tn + fn else float("nan")
    out.update(n=n_cases, n_pos=n_pos // r, repeats=r, tn=tn, fp=fp, fn=fn, tp=tp)
    return out
