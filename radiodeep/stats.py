"""Statistics of the evaluation: AUC with DeLong's variance, Wilson intervals, binary metrics.

* :func:`delong_ci` / :func:`delong_test`: the AUC (Mann-Whitney, ties count one half) and its
  variance by DeLong, DeLong & Clarke-Pearson (1988), computed with midranks as in Sun & Xu
  (2014); the interval is AUC +- z * SE clipped to [0, 1] (as pROC's ``ci.auc``), the test of two
  correlated AUCs on the same cases is the usual z test.
* :func:`wilson_ci`: Wilson's score interval of a proportion.
* :func:`binary_metrics`: AUC, accuracy, balanced accuracy, sensitivity, specificity, the
  confusion matrix, with their intervals.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["auc_score", "delong_ci", "delong_test", "delong_variance", "wilson_ci", "binary_metrics"]


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


def _cov(v: np.ndarray) -> np.ndarray:
    k, size = v.shape
    if size < 2:
        return np.full((k, k), np.nan)
    return np.atleast_2d(np.cov(v, ddof=1))


def auc_score(y_true, scores) -> float:
    """The AUC (probability that a positive scores above a negative, ties one half)."""
    return float(_structural(y_true, scores)[0][0])


def delong_variance(y_true, scores) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC)."""
    aucs, v10, v01, m, n = _structural(y_true, scores)
    var = _cov(v10)[0, 0] / m + _cov(v01)[0, 0] / n
    return float(aucs[0]), float(var)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2.0))


def delong_ci(y_true, scores, level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): AUC +- z * DeLong SE, clipped to [0, 1] (NaN bounds with < 2 per class)."""
    auc, var = delong_variance(y_true, scores)
    if not np.isfinite(var):
        return auc, float("nan"), float("nan")
    half = _z(level) * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def delong_test(y_true, scores_a, scores_b) -> dict:
    """DeLong's test of two correlated AUCs on the same cases (two-sided).

    Returns ``auc_a``, ``auc_b``, ``diff`` (a - b), ``z`` and ``p``.
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} differ in shape")
    aucs, v10, v01, m, n = _structural(y_true, np.vstack([a, b]))
    S = _cov(v10) / m + _cov(v01) / n
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


def binary_metrics(y_true, scores, y_pred, level: float = 0.95) -> dict:
    """Every metric of one set of out-of-sample predictions (labels 0/1, positive = 1)."""
    y = np.asarray(y_true).astype(int)
    yp = np.asarray(y_pred).astype(int)
    tp = int(((y == 1) & (yp == 1)).sum())
    tn = int(((y == 0) & (yp == 0)).sum())
    fp = int(((y == 0) & (yp == 1)).sum())
    fn = int(((y == 1) & (yp == 0)).sum())
    return _metrics_from(y, scores, tn, fp, fn, tp, len(y), level)


def _metrics_from(y, scores, tn, fp, fn, tp, n, level, auc_var=None) -> dict:
    n_pos, n_neg = tp + fn, tn + fp
    out: dict = {}
    if auc_var is None:
        try:
            auc, lo, hi = delong_ci(y, scores, level)
        except ValueError:
            auc = lo = hi = float("nan")
    else:
        auc, var = auc_var
        half = _z(level) * math.sqrt(var) if np.isfinite(var) else float("nan")
        lo, hi = max(0.0, auc - half), min(1.0, auc + half)
    out["auc"], out["auc_ci_low"], out["auc_ci_high"] = auc, lo, hi
    acc = (tp + tn) / n if n else float("nan")
    out["accuracy"] = acc
    out["accuracy_ci_low"], out["accuracy_ci_high"] = wilson_ci(tp + tn, n, level)
    sens = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    out["balanced_accuracy"] = (sens + spec) / 2.0
    out["sensitivity"] = sens
    out["sensitivity_ci_low"], out["sensitivity_ci_high"] = wilson_ci(tp, n_pos, level)
    out["specificity"] = spec
    out["specificity_ci_low"], out["specificity_ci_high"] = wilson_ci(tn, n_neg, level)
    out.update(n=n, n_pos=n_pos, tn=tn, fp=fp, fn=fn, tp=tp)
    return out
